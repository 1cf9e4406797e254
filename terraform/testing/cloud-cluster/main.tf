resource "null_resource" "control_plane" {
  triggers = {
    cluster_name       = var.cluster_name
    kubernetes_version = var.kubernetes_version
  }
}

resource "null_resource" "node" {
  count = var.node_count

  triggers = {
    control_plane = null_resource.control_plane.id
  }
}
