# BudCluster needs a kubeconfig it can use for months without any cloud CLI: its kubeconfig guard
# refuses exec plugins (`aws eks get-token`), and the aws_eks_cluster_auth token above lives only 15
# minutes. So the module creates a service account bound to a ClusterRole and a long-lived
# service-account token Secret for it; the kubeconfig output carries that token. Rotate it by tainting
# kubernetes_secret_v1.budcluster_token and applying again; revoke it by deleting the Secret.

resource "kubernetes_service_account_v1" "budcluster" {
  metadata {
    name      = var.service_account_name
    namespace = var.service_account_namespace
  }

  # The API accepts objects before nodes exist, but add-ons are healthier once the system pool is up.
  depends_on = [aws_eks_node_group.system]
}

resource "kubernetes_cluster_role_binding_v1" "budcluster" {
  metadata {
    name = var.service_account_name
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = var.service_account_cluster_role
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.budcluster.metadata[0].name
    namespace = kubernetes_service_account_v1.budcluster.metadata[0].namespace
  }
}

resource "kubernetes_secret_v1" "budcluster_token" {
  metadata {
    name      = "${var.service_account_name}-token"
    namespace = var.service_account_namespace
    annotations = {
      "kubernetes.io/service-account.name" = kubernetes_service_account_v1.budcluster.metadata[0].name
    }
  }

  type                           = "kubernetes.io/service-account-token"
  wait_for_service_account_token = true
}

locals {
  kubeconfig_user = "${var.cluster_name}-${var.service_account_name}"
  kubeconfig = yamlencode({
    apiVersion      = "v1"
    kind            = "Config"
    current-context = var.cluster_name
    clusters = [{
      name = var.cluster_name
      cluster = {
        server                     = aws_eks_cluster.this.endpoint
        certificate-authority-data = aws_eks_cluster.this.certificate_authority[0].data
      }
    }]
    users = [{
      name = local.kubeconfig_user
      user = {
        token = kubernetes_secret_v1.budcluster_token.data["token"]
      }
    }]
    contexts = [{
      name = var.cluster_name
      context = {
        cluster = var.cluster_name
        user    = local.kubeconfig_user
      }
    }]
  })
}
