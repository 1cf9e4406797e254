"""Webhook subscriptions, deliveries and attempts; the signing secret appears only in the answer that created or
rotated it."""

from __future__ import annotations

from rest_framework import serializers

from core import netguard
from core.api import serializers as strict

from ..models import Attempt, Delivery, Subscription
from ..services import check_event_types, check_webhook_url


class SubscriptionSerializer(strict.ModelSerializer):
    # Judged by the outbound-address guard (validate_url), whose messages say what is wrong; Django's URL
    # validator would answer only "Enter a valid URL."
    url = serializers.CharField(
        max_length=2000, help_text="http(s) URL of the receiver; a query may carry its token"
    )
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=120),
        required=False,
        max_length=50,
        help_text='Event types to deliver; a trailing ".*" matches a prefix (io.bud.deployment.*); empty: all',
    )

    class Meta:
        model = Subscription
        fields = (
            "id",
            "name",
            "url",
            "event_types",
            "enabled",
            "disabled_reason",
            "consecutive_failures",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("id", "disabled_reason", "consecutive_failures", "created_at", "updated_at")

    def validate_url(self, value: str) -> str:
        try:
            return check_webhook_url(value)
        except netguard.AddressRefused as exc:
            raise serializers.ValidationError(str(exc), code="address_refused") from None

    def validate_event_types(self, value: list[str]) -> list[str]:
        try:
            return check_event_types(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class SubscriptionCreatedSerializer(SubscriptionSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="whsec_… signing secret: shown in this answer only, store it now"
    )

    class Meta(SubscriptionSerializer.Meta):
        fields = (*SubscriptionSerializer.Meta.fields, "secret")


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ("number", "started_at", "status_code", "latency_ms", "error")


class DeliverySerializer(serializers.ModelSerializer):
    event_id = serializers.UUIDField(source="event.id", read_only=True)
    event_type = serializers.CharField(source="event.type", read_only=True)
    attempt_log = AttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = (
            "id",
            "event_id",
            "event_type",
            "subject",
            "position",
            "status",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "last_error",
            "attempt_log",
        )
