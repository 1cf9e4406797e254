"""Webhook subscriptions and their deliveries, read from the event outbox (``core.models.Event``).

A ``Subscription`` (URL, type filters, a signing secret encrypted at rest) gets a ``Delivery`` per
matching event; each POST is an ``Attempt`` (status code, latency, error). See ``webhooks/services.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.fields import EncryptedTextField
from core.models import Event


class Subscription(models.Model):
    """A webhook endpoint and the event types it receives."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=2000, help_text="http(s) URL; checked by the outbound-address guard")
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text='Types to deliver; a trailing ".*" matches a prefix (io.bud.deployment.*); empty = all',
    )
    secret = EncryptedTextField(context="events.subscription.secret", help_text="whsec_… signing secret")
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def matches(self, event_type: str) -> bool:
        return type_matches(self.event_types, event_type)


def type_matches(patterns: list[str], event_type: str) -> bool:
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.endswith(".*"):
            if event_type.startswith(pattern[:-1]):
                return True
        elif pattern == event_type:
            return True
    return False


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (retry window over)"


class Delivery(models.Model):
    """One event for one subscription. Per (subscription, subject) they go out strictly in ``position`` order:
    the earliest one not yet delivered is the head of the line, and a later one waits for it."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    position = models.BigIntegerField(help_text="The event's position (the order of the line)")
    subject = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    leased_until = models.DateTimeField(
        null=True, blank=True, help_text="A worker is posting it until then (a dead worker's lease runs out)"
    )
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ("subscription", "position")
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["subscription", "event"], name="delivery_unique_event"),
        ]
        indexes = [
            models.Index(
                fields=["subscription", "subject", "position"],
                condition=models.Q(status="pending"),
                name="delivery_line",
            ),
            models.Index(
                fields=["next_attempt_at"], condition=models.Q(status="pending"), name="delivery_due"
            ),
        ]
        permissions = [("redeliver_delivery", "Can send a webhook delivery again")]

    def __str__(self) -> str:
        return f"{self.subscription} #{self.position} ({self.status})"


class Attempt(models.Model):
    """One POST of a delivery."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ("delivery", "number")

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Cursor(models.Model):
    """A named reader's position in the outbox (the webhook dispatcher's)."""

    name = models.CharField(max_length=50, primary_key=True)
    position = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"
