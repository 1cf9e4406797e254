from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhook subscriptions: the outbox's events (core.events) posted, signed, to receivers."""

    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.signals import events_committed

        from . import services

        events_committed.connect(services.on_events_committed, dispatch_uid="webhooks.wake")
