"""The audit log in the admin: read-only for everyone (superusers included); entries leave only by retention."""

from __future__ import annotations

import json

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from core.admin import RecordAdmin

from .models import AuditEntry


def _value(value) -> str:
    return "—" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


@admin.register(AuditEntry)
class AuditEntryAdmin(RecordAdmin):
    """Who did what: filter by source, action and object type; search by actor, object, request id. Nothing here
    is added, edited or deleted by hand (``audit.view_auditentry`` lets one read it); ``AUDIT_RETENTION_DAYS``
    and its beat task remove old entries."""

    # An audit log an administrator can prune by hand proves nothing: retention is the only way out.

    list_display = (
        "time",
        "actor_name",
        "source",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "source_ip",
    )
    list_filter = ("source", "action", "object_type")
    search_fields = ("actor_name", "object_repr", "=object_id", "action", "=request_id", "=run_id")
    date_hierarchy = "time"
    list_per_page = 100
    fields = (
        "time",
        "actor_name",
        "actor_id",
        "source",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes_table",
        "run_link",
        "details",
        "source_ip",
        "request_id",
        "request",
    )
    readonly_fields = fields
    actions = None

    @admin.display(description="changes")
    def changes_table(self, obj: AuditEntry) -> str:
        if not obj.changes:
            return "—"
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td><code>{}</code></td><td><code>{}</code></td></tr>",
            ((name, _value(pair[0]), _value(pair[1])) for name, pair in sorted(obj.changes.items())),
        )
        return format_html(
            '<table class="audit-changes"><thead><tr><th>field</th><th>before</th><th>after</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="run")
    def run_link(self, obj: AuditEntry) -> str:
        if obj.run_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:core_run_change", args=[obj.run_id]), obj.run_id
        )
