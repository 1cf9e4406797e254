# Standalone use of the AKS module (BudCluster itself runs modules/azure-aks directly with a pg backend).
#
#   export ARM_CLIENT_ID=... ARM_CLIENT_SECRET=... ARM_TENANT_ID=... ARM_SUBSCRIPTION_ID=...
#   terraform init      # local state; add a backend of your own if you like (none is in source)
#   terraform apply
#   terraform output -raw kubeconfig > kubeconfig.yaml && chmod 600 kubeconfig.yaml
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

  tags = { environment = "demo" }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}

output "kubeconfig" {
  value     = module.cluster.kubeconfig
  sensitive = true
}
