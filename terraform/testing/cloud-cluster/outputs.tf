# The cloud modules' contract: where the cluster is and how to trust it, no credential.

output "cluster_name" {
  description = "Name of the cluster."
  value       = var.cluster_name
}

output "cluster_endpoint" {
  description = "HTTPS URL of the Kubernetes API server."
  value       = var.api_server
}

output "cluster_ca_certificate" {
  description = "Base64 PEM CA certificate of the API server."
  value       = var.ca_data
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = var.kubernetes_version
}

output "node_pools" {
  description = "Names of the pretend node pools."
  value       = ["system"]
}

output "node_count" {
  description = "Number of nodes created."
  value       = length(null_resource.node)
}
