from django.apps import AppConfig


class ClustersConfig(AppConfig):
    """Registered Kubernetes/OpenShift clusters: encrypted credentials, registration and deletion runs, health."""

    name = "clusters"
    verbose_name = "Clusters"
