"""The operators' view of webhooks: subscriptions (the secret is never shown again after it is made), deliveries
with every attempt, and a Redeliver action."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone
from django.utils.html import format_html

from core import netguard
from core.admin import CheckedActions

from . import services
from .models import Attempt, Delivery, Subscription


class SubscriptionForm(forms.ModelForm):
    url = forms.CharField(
        max_length=2000, help_text="http(s) URL of the receiver; a query may carry its token"
    )
    event_types = forms.CharField(
        required=False,
        help_text='Comma-separated event types; a trailing ".*" matches a prefix (io.bud.deployment.*); empty: all',
    )

    class Meta:
        model = Subscription
        fields = ("name", "url", "event_types", "enabled")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["event_types"] = ", ".join(self.instance.event_types or [])

    def clean_url(self) -> str:
        try:
            return services.check_webhook_url(self.cleaned_data["url"])
        except netguard.AddressRefused as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_event_types(self) -> list[str]:
        try:
            return services.check_event_types((self.cleaned_data.get("event_types") or "").split(","))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(Subscription)
class SubscriptionAdmin(CheckedActions, admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ("name", "receiver", "enabled", "consecutive_failures", "disabled_reason", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("name",)
    readonly_fields = ("disabled_reason", "consecutive_failures", "created_at", "updated_at")

    @admin.display(description="receiver")
    def receiver(self, obj: Subscription) -> str:
        return services.url_host(obj.url)

    def save_model(self, request, obj, form, change):
        secret = None
        if not change:
            secret = services.new_secret()
            obj.secret = secret
            obj.created_by = request.user
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)
        transaction.on_commit(services.forget_subscriptions)
        if change and "enabled" in form.changed_data and obj.enabled:
            services.reenabled(obj)
        if secret:
            self.message_user(
                request,
                format_html(
                    "Signing secret of {} (shown this once, store it now): <code id='webhook-secret'>{}</code>",
                    obj.name,
                    secret,
                ),
                messages.WARNING,
            )


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = ("number", "started_at", "status_code", "latency_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(CheckedActions, admin.ModelAdmin):
    list_display = (
        "subscription",
        "event_type",
        "subject",
        "position",
        "status",
        "attempts",
        "next_attempt_at",
    )
    list_filter = ("status", "subscription")
    list_select_related = ("subscription", "event")
    search_fields = ("subject",)
    ordering = ("-position",)
    fields = (
        "subscription",
        "event_type",
        "subject",
        "position",
        "status",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "last_error",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)
    actions = ("redeliver",)

    @admin.display(description="event type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.type

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_redeliver_permission(self, request) -> bool:
        return request.user.has_perm("webhooks.redeliver_delivery")

    @admin.action(description="Redeliver selected deliveries", permissions=["redeliver"])
    def redeliver(self, request, queryset) -> None:
        with transaction.atomic():
            chosen = list(queryset)
            for delivery in chosen:
                services.redeliver(delivery)
        self.message_user(request, f"{len(chosen)} delivery(ies) will be sent again.", messages.SUCCESS)
