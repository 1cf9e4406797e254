from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = "Metrics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # In the Celery worker this times the health sweeps; in web it connects handlers that never fire.
        from . import sweeps

        sweeps.connect()
