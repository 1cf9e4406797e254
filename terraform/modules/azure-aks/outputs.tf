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
  value       = azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate
  sensitive   = true
}

output "node_pools" {
  description = "Names of the node pools (system first, then GPU pools)."
  value       = concat(["system"], [for pool in azurerm_kubernetes_cluster_node_pool.gpu : pool.name])
}

output "kubeconfig" {
  description = "Kubeconfig with a long-lived service-account token (no exec plugin). Sensitive: store encrypted."
  value       = local.kubeconfig
  sensitive   = true
}
