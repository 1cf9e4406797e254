# Standalone use of the EKS module (BudCluster itself runs modules/aws-eks directly with a pg backend and
# mints its own credential after apply).
#
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
#   terraform init      # local state; add a backend of your own if you like (none is in source)
#   terraform apply
#
# The module outputs no credential (the state would hold it in plain text). The IAM identity that ran the
# apply is the cluster's admin (an EKS access entry); reach the cluster with your own tools:
#
#   aws eks update-kubeconfig --name "$(terraform output -raw cluster_name)" --region us-east-1
#
# and, to register it with BudCluster (whose kubeconfig guard refuses the `aws eks get-token` exec plugin),
# print a service-account token kubeconfig from that context:
#
#   ../../../scripts/budcluster-kubeconfig.sh > budcluster.kubeconfig
terraform {
  required_version = ">= 1.5.0"
}

module "cluster" {
  source = "../../modules/aws-eks"

  cluster_name       = "bud-demo"
  region             = "us-east-1"
  kubernetes_version = "1.31"

  system_node_pool = {
    instance_type = "m6i.large"
    min_size      = 2
    max_size      = 3
    desired_size  = 2
  }

  gpu_node_pools = [
    {
      name          = "a10g"
      instance_type = "g5.xlarge"
      ami_type      = "AL2023_x86_64_NVIDIA"
      min_size      = 0
      max_size      = 2
      desired_size  = 1
      labels        = { "budcluster.io/gpu-model" = "A10G" }
      taints        = [{ key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }]
    },
  ]

  tags = { environment = "demo" }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}

output "cluster_name" {
  value = module.cluster.cluster_name
}

output "cluster_ca_certificate" {
  value = module.cluster.cluster_ca_certificate
}
