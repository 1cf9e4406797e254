output "cluster_name" {
  description = "Name of the cluster."
  value       = var.cluster_name
}

output "cluster_endpoint" {
  description = "API server URL."
  value       = var.api_server
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = var.kubernetes_version
}

output "node_count" {
  description = "Number of nodes created."
  value       = length(null_resource.node)
}

# The kubeconfig names the user but carries no credential: Terraform keeps every output in its state in
# plain text. BudCluster adds the token it already holds (the `token` variable, which Terraform never
# writes into the state) and stores the finished kubeconfig encrypted.
output "kubeconfig" {
  description = "Kubeconfig of the cluster without the user's credential (BudCluster adds the token variable)."
  sensitive   = true
  value = yamlencode({
    apiVersion      = "v1"
    kind            = "Config"
    current-context = var.cluster_name
    clusters = [{
      name = var.cluster_name
      cluster = merge(
        { server = var.api_server },
        var.ca_data == "" ? {} : { certificate-authority-data = var.ca_data },
      )
    }]
    users = [{
      name = "${var.cluster_name}-budcluster"
      user = {}
    }]
    contexts = [{
      name = var.cluster_name
      context = {
        cluster = var.cluster_name
        user    = "${var.cluster_name}-budcluster"
      }
    }]
  })
}
