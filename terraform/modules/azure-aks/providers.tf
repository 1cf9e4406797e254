# Credentials come from the environment of the Terraform process only (ARM_CLIENT_ID,
# ARM_CLIENT_SECRET, ARM_TENANT_ID, ARM_SUBSCRIPTION_ID); nothing secret is configured here.
# State backend: none in source. BudCluster's runner adds a `pg` backend at run time; standalone users
# pass their own with `terraform init -backend-config=...` (see ../../README.md).
provider "azurerm" {
  features {}

  # null falls back to ARM_SUBSCRIPTION_ID.
  subscription_id = var.subscription_id
}

# The local account credentials (client certificate from kube_config) are used during this apply only, to create
# the BudCluster service account; they are not part of the kubeconfig output.
provider "kubernetes" {
  host                   = azurerm_kubernetes_cluster.this.kube_config[0].host
  client_certificate     = base64decode(azurerm_kubernetes_cluster.this.kube_config[0].client_certificate)
  client_key             = base64decode(azurerm_kubernetes_cluster.this.kube_config[0].client_key)
  cluster_ca_certificate = base64decode(azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate)
}
