from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    """Model deployments: placement, model transfer, runtime releases, deployment health, benchmarks."""

    name = "deployments"
    verbose_name = "Deployments"
