# A stand-in for the cloud modules where no cloud is reachable (tests, local development), shaped like them
# rather than like ../local-cluster: it returns no credential at all, only where the "cluster" is
# (cluster_endpoint, cluster_ca_certificate), so BudCluster mints the cluster's credential after apply the
# way it does for EKS and AKS (provisioning/cloud_auth.py). Where the cloud modules let BudCluster
# authenticate as the cloud identity that ran Terraform, this module takes that short-lived admin token as
# its sensitive `bootstrap_token` variable, which no resource or output uses, so it never reaches the state.
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
