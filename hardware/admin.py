"""Node inventory in the admin: its own list with filters, and inline on each cluster."""

from __future__ import annotations

from django.contrib import admin

from core.admin import ReadOnlyInline

from .models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "name", "cluster", "ready", "schedulable", "accelerator_type", "accelerator_model", "accelerator_count",
        "free_accelerators", "cpu_model", "updated_at",
    )  # fmt: skip
    list_filter = ("cluster", "accelerator_type", "accelerator_model", "ready", "schedulable")
    search_fields = ("name", "accelerator_model", "cpu_model", "cluster__name")
    list_select_related = ("cluster",)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Node._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # the inventory comes from the cluster (collect-node-info)


class NodeInline(ReadOnlyInline):
    model = Node
    show_change_link = True
    fields = ("name", "ready", "schedulable", "accelerator_type", "accelerator_model", "accelerator_count",
              "free_accelerators", "cpu_model", "memory_bytes")  # fmt: skip
    readonly_fields = fields
