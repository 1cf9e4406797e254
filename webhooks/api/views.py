"""``/webhooks``: subscriptions (create shows the secret once), their deliveries with every attempt, secret
rotation and redelivery."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core.api import serializers as strict
from core.models import recorded_user

from .. import services
from ..models import Attempt, Delivery, Subscription
from .serializers import DeliverySerializer, SubscriptionCreatedSerializer, SubscriptionSerializer


class SubscriptionViewSet(viewsets.ModelViewSet):
    queryset = Subscription.objects.all()
    serializer_class = SubscriptionSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    search_fields = ("name",)
    ordering_fields = ("name", "created_at")
    permission_map = {
        "rotate_secret": ["webhooks.change_subscription"],
        "deliveries": ["webhooks.view_subscription", "webhooks.view_delivery"],
        "redeliver": ["webhooks.view_subscription", "webhooks.redeliver_delivery"],
    }
    paged_actions = ("deliveries",)

    def get_serializer_class(self):
        if self.action == "deliveries":
            return DeliverySerializer
        if self.action in ("rotate_secret", "redeliver"):
            return strict.NoBody
        return SubscriptionSerializer

    @extend_schema(responses={201: SubscriptionCreatedSerializer})
    def create(self, request, *args, **kwargs):
        """Subscribe a URL; the answer carries the signing secret, the only time it is shown."""
        body = SubscriptionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        secret = services.new_secret()
        with transaction.atomic():
            sub = body.save(secret=secret, created_by=recorded_user(request.user))
            transaction.on_commit(services.forget_subscriptions)
        data = SubscriptionCreatedSerializer(sub).data
        data["secret"] = secret
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        was_enabled = serializer.instance.enabled
        with transaction.atomic():
            serializer.save(updated_at=timezone.now())
            transaction.on_commit(services.forget_subscriptions)
            if serializer.instance.enabled and not was_enabled:
                services.reenabled(serializer.instance)

    @extend_schema(request=None, responses={200: SubscriptionCreatedSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        """A new signing secret (shown in this answer only); the old one stops signing at once."""
        sub = self.get_object()
        strict.NoBody(data=request.data).is_valid(raise_exception=True)
        secret = services.new_secret()
        Subscription.objects.filter(pk=sub.pk).update(secret=secret, updated_at=timezone.now())
        sub.refresh_from_db()
        data = SubscriptionCreatedSerializer(sub).data
        data["secret"] = secret
        return Response(data)

    @extend_schema(responses={200: DeliverySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The subscription's deliveries, newest first, each with its attempts (status code, latency, error)."""
        sub = self.get_object()
        qs = (
            Delivery.objects.filter(subscription=sub)
            .select_related("event")
            .prefetch_related(Prefetch("attempt_log", queryset=Attempt.objects.order_by("number")))
            .order_by("-position")
        )
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"], url_path=r"deliveries/(?P<delivery_id>[0-9]+)/redeliver")
    def redeliver(self, request, pk=None, delivery_id=None):
        """Send a delivery again (delivered, failed or waiting for its retry)."""
        sub = self.get_object()
        strict.NoBody(data=request.data).is_valid(raise_exception=True)
        delivery = get_object_or_404(Delivery, pk=delivery_id, subscription=sub)
        with transaction.atomic():
            services.redeliver(delivery)
        delivery.refresh_from_db()
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
