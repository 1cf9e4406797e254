# Credentials come from the environment of the Terraform process only (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); nothing secret is configured here.
# State backend: none in source. BudCluster's runner adds a `pg` backend at run time; standalone users
# pass their own with `terraform init -backend-config=...` (see ../../README.md).
#
# No kubernetes provider: the module creates nothing inside the cluster, so no credential of the cluster
# ever passes through Terraform or its state. BudCluster mints its own service-account token after apply
# (provisioning/cloud_auth.py), authenticating as the IAM identity that ran this apply (see access_config
# in eks.tf).
provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "managed-by"         = "budcluster"
      "budcluster/cluster" = var.cluster_name
    })
  }
}
