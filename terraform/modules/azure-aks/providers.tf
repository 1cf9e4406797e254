# Credentials come from the environment of the Terraform process only (ARM_CLIENT_ID,
# ARM_CLIENT_SECRET, ARM_TENANT_ID, ARM_SUBSCRIPTION_ID); nothing secret is configured here.
# State backend: none in source. BudCluster's runner adds a `pg` backend at run time; standalone users
# pass their own with `terraform init -backend-config=...` (see ../../README.md).
#
# No kubernetes provider: the module creates nothing inside the cluster, so no credential of the cluster
# ever passes through Terraform or its state. BudCluster mints its own service-account token after apply
# (provisioning/cloud_auth.py), authenticating as the principal that ran this apply (see the role
# assignment in main.tf).
provider "azurerm" {
  features {}

  # null falls back to ARM_SUBSCRIPTION_ID.
  subscription_id = var.subscription_id
}

# The identity Terraform runs as: its tenant for Entra ID integration, its object id for the role assignment.
data "azurerm_client_config" "current" {}
