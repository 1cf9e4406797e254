"""Node inventory in the admin: its own list with filters, and what hardware adds to the cluster admin.

``clusters`` knows nothing of the inventory, so hardware extends its admin the way it extends its API: the
Cluster admin registered here is ``clusters.admin.ClusterAdmin`` plus the node inline and the "Collect node
information" action (the same ``hardware.services.start_collection`` and permission as
``POST /clusters/{id}/collect-node-info``). This module imports ``clusters.admin`` first, so the replacement
holds whatever order the admin autodiscovery imports the apps in.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, Sum

from clusters.admin import ClusterAdmin
from clusters.models import Cluster
from core.admin import ReadOnlyInline, start_each

from . import services
from .choices import AcceleratorType
from .models import Node

# Accelerators are GPUs and HPUs: a CPU-only node's devices are not counted.
_ACCELERATOR_NODES = ~Q(nodes__accelerator_type=AcceleratorType.CPU)


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

    def has_delete_permission(self, request, obj=None) -> bool:
        # A row mirrors a node of the cluster: deleting it removes nothing there (the next refresh brings it
        # back) and only hides the node from placement meanwhile. Cordon or remove the node in Kubernetes.
        return False


class NodeInline(ReadOnlyInline):
    model = Node
    show_change_link = True
    fields = ("name", "ready", "schedulable", "accelerator_type", "accelerator_model", "accelerator_count",
              "free_accelerators", "cpu_model", "memory_bytes")  # fmt: skip
    readonly_fields = fields


class ClusterInventoryAdmin(ClusterAdmin):
    """The clusters admin with node and accelerator counts in the list, each cluster's nodes inline and the node
    collection action."""

    list_display = (
        *ClusterAdmin.list_display[:3],
        "node_count",
        "accelerators",
        *ClusterAdmin.list_display[3:],
    )
    inlines = (NodeInline, *ClusterAdmin.inlines)
    actions = (*ClusterAdmin.actions, "collect_node_info")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _nodes=Count("nodes", distinct=True),
                _ready=Count("nodes", filter=Q(nodes__ready=True)),
                # One join over nodes for all four figures: sums over it count each node once.
                _accelerators=Sum("nodes__accelerator_count", filter=_ACCELERATOR_NODES),
                _free=Sum("nodes__free_accelerators", filter=_ACCELERATOR_NODES),
            )
        )

    @admin.display(description="nodes (ready)")
    def node_count(self, obj: Cluster) -> str:
        if not hasattr(obj, "_nodes"):
            return "-"
        return f"{obj._nodes} ({obj._ready})"

    @admin.display(description="GPUs total / free", ordering="_accelerators")
    def accelerators(self, obj: Cluster) -> str:
        if not hasattr(obj, "_accelerators"):
            return "-"
        return f"{obj._accelerators or 0} / {obj._free or 0}"

    @admin.action(
        description="Collect node information (roll out collectors, refresh inventory)",
        permissions=["collect"],
    )
    def collect_node_info(self, request, queryset) -> None:
        start_each(
            self, request, queryset, lambda c: services.start_collection(c, user=request.user),
            done="Node information collection started for {count} cluster(s).",
        )  # fmt: skip

    def has_collect_permission(self, request) -> bool:
        return request.user.has_perm(services.COLLECT_PERMISSION)


admin.site.unregister(Cluster)
admin.site.register(Cluster, ClusterInventoryAdmin)
