# BudCluster needs a kubeconfig it can use for months without any cloud CLI, and its kubeconfig guard
# refuses exec plugins (kubelogin). AKS's own `kube_config_raw` of the local account would qualify
# (client certificate, no exec), but it is the cluster's built-in admin identity and cannot be revoked
# without rotating the cluster certificates. So, as on EKS, the module creates a dedicated service
# account bound to a ClusterRole and a long-lived service-account token Secret for it; the kubeconfig
# output carries that token. Rotate it by tainting kubernetes_secret_v1.budcluster_token and applying
# again; revoke it by deleting the Secret.

resource "kubernetes_service_account_v1" "budcluster" {
  metadata {
    name      = var.service_account_name
    namespace = var.service_account_namespace
  }

  # Created once the system pool (part of the cluster resource on AKS) is up.
  depends_on = [azurerm_kubernetes_cluster.this]
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
        server                     = azurerm_kubernetes_cluster.this.kube_config[0].host
        certificate-authority-data = azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate
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
