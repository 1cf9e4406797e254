"""Admin for runs (read-only, steps and events inline, a cancel action), API tokens (no key is ever shown but
once, on creation) and what every app's admin shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import knox.admin  # noqa: F401  (registers knox's token admin first, so the one below replaces it)
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html
from knox.models import AuthToken

from . import tokens, workflow
from .choices import RunStatus
from .errors import Refused
from .models import Run, RunEvent, RunStep

STATUS_COLOURS = {
    "pending": "#6c757d",
    "running": "#0d6efd",
    "waiting": "#0dcaf0",
    "cleaning_up": "#fd7e14",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "cancelled": "#6f42c1",
    "skipped": "#adb5bd",
}


def status_badge(value: str, label: str | None = None) -> str:
    colour = STATUS_COLOURS.get(value, "#6c757d")
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:8px">{}</span>',
        colour,
        label or value,
    )


def start_each(
    model_admin: admin.ModelAdmin, request, objects: Iterable[Any], start: Callable[[Any], Any], *, done: str
) -> int:
    """An admin action over the selected objects: ``start(obj)`` calls the service (the same one the API calls);
    a refusal becomes that object's warning and the others go on; ``done`` (with ``{count}``) sums up."""
    started = 0
    for obj in objects:
        try:
            start(obj)
        except Refused as exc:
            model_admin.message_user(request, str(exc), messages.WARNING)
            continue
        started += 1
    model_admin.message_user(request, done.format(count=started))
    return started


class CheckedActions:
    """ModelAdmin mixin: an action request naming an action this user may not run (its ``permissions`` are not
    met, so the admin does not offer it) answers 403; Django alone would show the list again with 200."""

    def changelist_view(self, request, extra_context=None):
        action = (
            request.POST.get("action") if request.method == "POST" and "_save" not in request.POST else None
        )
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class RunStepInline(ReadOnlyInline):
    model = RunStep
    fields = (
        "order",
        "title",
        "phase",
        "status",
        "attempt",
        "progress",
        "message",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields


class RunEventInline(ReadOnlyInline):
    model = RunEvent
    fields = ("created_at", "step", "status", "message")
    readonly_fields = fields


@admin.register(Run)
class RunAdmin(CheckedActions, admin.ModelAdmin):
    list_display = (
        "title",
        "kind",
        "coloured_status",
        "progress_percent",
        "subject_id",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("id", "title", "kind", "subject_id")
    date_hierarchy = "created_at"
    inlines = (RunStepInline, RunEventInline)
    actions = ("cancel_runs",)
    readonly_fields = (
        "id", "kind", "title", "subject_type", "subject_id", "params", "status", "cancel_requested", "error",
        "progress", "eta", "created_by", "created_at", "started_at", "finished_at", "heartbeat_at", "wake_at",
        "resumed_count",
    )  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Viewing is allowed through the view permission; nothing on a run is edited by hand.
        return False

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Run) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, obj: Run) -> str:
        return f"{obj.progress:.0f}%"

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request, queryset) -> None:
        cancelled = sum(
            1 for run in queryset.filter(status__in=RunStatus.active()) if workflow.request_cancel(run)
        )
        self.message_user(request, f"Cancel requested for {cancelled} run(s).", messages.SUCCESS)

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("core.cancel_run")


# --- API tokens ------------------------------------------------------------------------------------------------


class TokenCreateForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username")
    )
    days = forms.FloatField(
        required=False,
        min_value=0,
        help_text="Lifetime in days (0: no expiry); empty: the API_TOKEN_TTL_DAYS default.",
    )


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class TokenAdmin(CheckedActions, admin.ModelAdmin):
    """API tokens: who holds one, since when, until when. Only a digest is stored, so no page can show a key;
    a superuser creates a token here (its key is shown once, on the answer to the form) and revokes tokens."""

    list_display = ("user", "created", "expiry", "state")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("-created",)
    fields = ("user", "created", "expiry", "state")
    readonly_fields = fields
    actions = ("revoke_tokens",)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "revoke" says what it does
        return actions

    def has_add_permission(self, request) -> bool:
        # A token acts as its user: only a superuser may make one for someone.
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="state")
    def state(self, obj: AuthToken) -> str:
        if obj.expiry is None:
            return "active (no expiry)"
        return "expired" if obj.expiry <= timezone.now() else "active"

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke_tokens(self, request, queryset) -> None:
        doomed = list(queryset)
        self.log_deletions(request, doomed)
        revoked, _ = queryset.filter(pk__in=[t.pk for t in doomed]).delete()
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TokenCreateForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Create an API token",
            "form": form,
        }
        if request.method == "POST" and form.is_valid():
            days = form.cleaned_data["days"]
            if days is None:
                token, key = tokens.create_token(form.cleaned_data["user"])
            else:
                token, key = tokens.create_token(form.cleaned_data["user"], days=days)
            self.log_addition(request, token, [{"added": {}}])
            context.update(title="API token created", token=token, key=key)
            response = TemplateResponse(request, "admin/knox/authtoken/created.html", context)
            response["Cache-Control"] = "no-store"  # the only copy of the key: never cached
            return response
        return TemplateResponse(request, "admin/knox/authtoken/add.html", context)
