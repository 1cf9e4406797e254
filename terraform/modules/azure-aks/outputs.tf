# No output carries a credential: Terraform keeps outputs in its state in plain text. BudCluster builds the
# cluster's kubeconfig from cluster_endpoint and cluster_ca_certificate and a service-account token it mints
# after apply (provisioning/cloud_auth.py), and stores that kubeconfig only encrypted.

output "cluster_name" {
  description = "Name of the AKS cluster (the requested name)."
  value       = azurerm_kubernetes_cluster.this.name
}

output "cluster_endpoint" {
  description = "HTTPS URL of the Kubernetes API server."
  # Built from the FQDN: kube_config is a sensitive block as a whole and would make this output sensitive.
  value = "https://${azurerm_kubernetes_cluster.this.fqdn}:443"
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = azurerm_kubernetes_cluster.this.kubernetes_version
}

output "location" {
  description = "Azure region of the cluster."
  value       = azurerm_resource_group.this.location
}

output "resource_group_name" {
  description = "Resource group holding the cluster and its network."
  value       = azurerm_resource_group.this.name
}

output "cluster_ca_certificate" {
  description = "Base64 PEM CA certificate of the API server."
  # A public certificate, but the provider marks the whole kube_config block sensitive. With local accounts
  # disabled the block holds no secret (no client key, certificate or password).
  value = nonsensitive(azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate)
}

output "tenant_id" {
  description = "Entra ID tenant of the cluster's Azure RBAC (the tenant BudCluster asks for its bootstrap token)."
  value       = data.azurerm_client_config.current.tenant_id
}

output "node_pools" {
  description = "Names of the node pools (system first, then GPU pools)."
  value       = concat(["system"], [for pool in azurerm_kubernetes_cluster_node_pool.gpu : pool.name])
}
