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

output "kubeconfig" {
  description = "Token-based kubeconfig (no exec plugin) for the cluster."
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
      user = { token = var.token }
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
