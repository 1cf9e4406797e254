"""Admin for runs (read-only, steps and events inline, a cancel action) and what every app's admin shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.utils.html import format_html

from . import workflow
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
class RunAdmin(admin.ModelAdmin):
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
