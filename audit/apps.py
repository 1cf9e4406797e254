from django.apps import AppConfig


class AuditConfig(AppConfig):
    """Who did what from the API, the admin and management commands (see ``audit.capture``)."""

    name = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from . import capture

        capture.connect()
