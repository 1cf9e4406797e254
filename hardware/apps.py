"""The hardware app: node inventory (collector rollout, parsing Node objects, refresh, capacity views)."""

from django.apps import AppConfig

from clusters import extensions


class HardwareConfig(AppConfig):
    """Node inventory: collector rollout, parsing Node objects, refresh, capacity views."""

    name = "hardware"
    verbose_name = "Hardware"

    def ready(self) -> None:
        # The cluster API shows each cluster's hardware summary through clusters' extension point, so the lower
        # layer never imports this app. Imported here, not at the top: services needs the models loaded.
        from . import services

        extensions.provide_summary(services.cluster_summaries)
