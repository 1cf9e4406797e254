# Standalone use of the AKS module (BudCluster itself runs modules/azure-aks directly with a pg backend and
# mints its own credential after apply).
#
#   export ARM_CLIENT_ID=... ARM_CLIENT_SECRET=... ARM_TENANT_ID=... ARM_SUBSCRIPTION_ID=...
#   terraform init      # local state; add a backend of your own if you like (none is in source)
#   terraform apply
#
# The module outputs no credential (the state would hold it in plain text) and the cluster has no local
# accounts: access is Entra ID with Azure RBAC. The principal that ran the apply is cluster admin, and so
# are the members of admin_group_object_ids (put your own group there). Reach the cluster with your tools:
#
#   az aks get-credentials --resource-group "$(terraform output -raw resource_group_name)" \
#     --name "$(terraform output -raw cluster_name)" && kubelogin convert-kubeconfig -l azurecli
#
# and, to register it with BudCluster (whose kubeconfig guard refuses the kubelogin exec plugin), print a
# service-account token kubeconfig from that context:
#
#   ../../../scripts/budcluster-kubeconfig.sh > budcluster.kubeconfig
terraform {
  required_version = ">= 1.5.0"
}

module "cluster" {
  source = "../../modules/azure-aks"

  cluster_name       = "bud-demo"
  location           = "eastus"
  kubernetes_version = "1.31"

  system_node_pool = {
    vm_size    = "Standard_D4s_v5"
    min_count  = 2
    max_count  = 3
    node_count = 2
  }

  gpu_node_pools = [
    {
      name       = "t4"
      vm_size    = "Standard_NC4as_T4_v3"
      os_sku     = "Ubuntu"
      min_count  = 0
      max_count  = 2
      node_count = 1
      labels     = { "budcluster.io/gpu-model" = "T4" }
      taints     = [{ key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }]
    },
  ]

  # Entra ID groups whose members administer the cluster with kubectl (kubelogin).
  admin_group_object_ids = []

  tags = { environment = "demo" }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}

output "cluster_name" {
  value = module.cluster.cluster_name
}

output "resource_group_name" {
  value = module.cluster.resource_group_name
}

output "cluster_ca_certificate" {
  value = module.cluster.cluster_ca_certificate
}
