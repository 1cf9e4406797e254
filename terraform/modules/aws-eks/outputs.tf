# No output carries a credential: Terraform keeps outputs in its state in plain text. BudCluster builds the
# cluster's kubeconfig from cluster_endpoint and cluster_ca_certificate and a service-account token it mints
# after apply (provisioning/cloud_auth.py), and stores that kubeconfig only encrypted.

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "HTTPS URL of the Kubernetes API server."
  value       = aws_eks_cluster.this.endpoint
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = aws_eks_cluster.this.version
}

output "region" {
  description = "AWS region of the cluster."
  value       = var.region
}

output "cluster_ca_certificate" {
  description = "Base64 PEM CA certificate of the API server."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "vpc_id" {
  description = "ID of the VPC created for the cluster."
  value       = aws_vpc.this.id
}

output "node_pools" {
  description = "Names of the node groups (system first, then GPU pools)."
  value       = concat([aws_eks_node_group.system.node_group_name], [for pool in aws_eks_node_group.gpu : pool.node_group_name])
}
