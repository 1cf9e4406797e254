from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    """New clusters on AWS EKS / Azure AKS with Terraform, on-prem configuration with Ansible."""

    name = "provisioning"
    verbose_name = "Provisioning"
