# A stand-in for the cloud modules in tests and local development: it creates no infrastructure, only
# null resources that take a configurable time, and returns the same outputs contract as
# modules/aws-eks and modules/azure-aks (cluster_name, cluster_endpoint, kubernetes_version, kubeconfig).
# It must stay parseable by Terraform 1.0.3, the version installable from PyPI on CI machines.
terraform {
  required_version = ">= 1.0.0"

  required_providers {
    null = {
      source  = "hashicorp/null"
      version = "2.1.2"
    }
  }
}
