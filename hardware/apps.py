from django.apps import AppConfig


class HardwareConfig(AppConfig):
    """Node inventory: collector rollout, parsing Node objects, refresh, capacity views."""

    name = "hardware"
    verbose_name = "Hardware"
