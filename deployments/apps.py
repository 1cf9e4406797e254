from django.apps import AppConfig


def active_deployments(cluster) -> int:
    """Deployments on the cluster that hold (or are about to hold) objects on it: deletion waits for them."""
    from .choices import DeploymentStatus
    from .models import Deployment

    return Deployment.objects.filter(cluster=cluster, status__in=DeploymentStatus.active()).count()


class DeploymentsConfig(AppConfig):
    """Model deployments: placement, model transfer, runtime releases, deployment health, benchmarks."""

    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        from clusters import extensions

        extensions.provide_deployment_counter(active_deployments)
