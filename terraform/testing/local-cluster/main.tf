locals {
  sleep = "sleep ${var.resource_delay_seconds}"
  # printenv prints nothing (and fails) for an unset variable; "|| true" keeps the resource healthy.
  echo = var.echo_env_var == "" ? "true" : "printenv ${var.echo_env_var} || true"
}

resource "null_resource" "network" {
  triggers = {
    cluster_name = var.cluster_name
  }

  provisioner "local-exec" {
    command = "${local.echo}; ${local.sleep}"
  }
}

resource "null_resource" "control_plane" {
  triggers = {
    network            = null_resource.network.id
    kubernetes_version = var.kubernetes_version
  }

  provisioner "local-exec" {
    command = local.sleep
  }
}

resource "null_resource" "node" {
  count = var.node_count

  triggers = {
    control_plane = null_resource.control_plane.id
  }

  provisioner "local-exec" {
    command = local.sleep
  }
}
