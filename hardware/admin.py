"""Node inventory in the admin: its own list with filters, and what hardware adds to the cluster admin.

``clusters`` knows nothing of the inventory, so hardware extends its admin the way it extends its API: the
Cluster admin registered here is ``clusters.admin.ClusterAdmin`` plus the node inline, the "Collect node
information" action (the same ``hardware.services.start_collection`` and permission as
``POST /clusters/{id}/collect-node-info``) and the capacity section at the top of a cluster's page. This module
imports ``clusters.admin`` first, so the replacement holds whatever order the admin autodiscovery imports the apps
in.

Capacity is counted once, here, for every page that shows it: :func:`accelerators_by_model` groups a set of nodes
by cluster and accelerator model in one query (the fleet dashboard reads the whole fleet through it, a cluster's
page its own nodes) and :func:`capacity_bars` sizes the bar charts. A node's page is read-only (the inventory comes
from the cluster): no Save button, its taints, allocatable and requested resources as tables, sizes in GiB.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib import admin
from django.db.models import Count, Max, Q, QuerySet, Sum

from clusters.admin import ClusterAdmin, OverviewSection, data_table, human_bytes, human_cores
from clusters.models import Cluster
from core.admin import ReadOnlyInline, start_each

from . import services
from .choices import AcceleratorType
from .models import Node

# Accelerators are GPUs and HPUs: a CPU-only node's devices are not counted.
_ACCELERATOR_NODES = ~Q(nodes__accelerator_type=AcceleratorType.CPU)


# --- capacity ---------------------------------------------------------------------------------------------------


def accelerators_by_model(nodes: QuerySet[Node]) -> dict[int, dict[str, Any]]:
    """Per cluster of ``nodes``: ``{"nodes", "ready", "memory_bytes", "free_memory_bytes", "models"}``, where
    ``models`` is ``[{"model", "total", "free", "memory_mib"}]`` by accelerator model (CPU-only nodes count as
    nodes, not devices; a model the labellers did not name reads "<type>, model unknown"). One query whatever the
    number of nodes; clusters without nodes read as zeros."""
    rows = (
        nodes.values("cluster_id", "accelerator_type", "accelerator_model")
        .annotate(
            n=Count("pk"),
            ready=Count("pk", filter=Q(ready=True)),
            total=Sum("accelerator_count"),
            free=Sum("free_accelerators"),
            memory_mib=Max("accelerator_memory_mib"),
            memory=Sum("memory_bytes"),
            free_memory=Sum("free_memory_bytes"),
        )
        .order_by("cluster_id", "accelerator_model")
    )
    clusters: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"nodes": 0, "ready": 0, "memory_bytes": 0, "free_memory_bytes": 0, "models": []}
    )
    for row in rows:
        entry = clusters[row["cluster_id"]]
        entry["nodes"] += row["n"]
        entry["ready"] += row["ready"]
        entry["memory_bytes"] += row["memory"] or 0
        entry["free_memory_bytes"] += row["free_memory"] or 0
        if row["accelerator_type"] == AcceleratorType.CPU:
            continue
        model = row["accelerator_model"] or f"{AcceleratorType(row['accelerator_type']).label}, model unknown"
        total = row["total"] or 0
        entry["models"].append(
            {
                "model": model,
                "total": total,
                "free": min(row["free"] or 0, total),
                "memory_mib": row["memory_mib"],
            }
        )
    return clusters


def capacity_bars(total: int, free: int, widest: int, width: int = 200) -> dict[str, int]:
    """Widths in an SVG's user units: the whole bar is ``total`` against the widest shown, the free part (drawn
    green) sits at its right end."""
    whole = round(width * total / widest) if widest else 0
    free_width = round(whole * free / total) if total else 0
    return {"width": width, "used": whole - free_width, "free": free_width}


# --- nodes ------------------------------------------------------------------------------------------------------


class NodeDisplay:
    """A node's stored values as people read them (sizes in GiB, CPU in cores, JSON as tables)."""

    @admin.display(description="memory", ordering="memory_bytes")
    def memory(self, obj: Node) -> str:
        return human_bytes(obj.memory_bytes)

    @admin.display(description="free memory")
    def free_memory(self, obj: Node) -> str:
        return human_bytes(obj.free_memory_bytes)

    @admin.display(description="free CPU")
    def free_cpu(self, obj: Node) -> str:
        return human_cores(obj.free_cpu_millicores)

    @admin.display(description="memory per device")
    def accelerator_memory(self, obj: Node) -> str:
        mib = obj.accelerator_memory_mib
        return "-" if mib is None else human_bytes(mib * 1024**2)

    @admin.display(description="taints")
    def taints_table(self, obj: Node) -> str:
        return data_table(obj.taints, empty="none")

    @admin.display(description="allocatable")
    def allocatable_table(self, obj: Node) -> str:
        return data_table(obj.allocatable)

    @admin.display(description="requested by running pods")
    def requested_table(self, obj: Node) -> str:
        return data_table(obj.requested)

    @admin.display(description="MIG slices")
    def mig_table(self, obj: Node) -> str:
        return data_table(obj.mig, empty="none")

    @admin.display(description="roles")
    def roles_list(self, obj: Node) -> str:
        return data_table(obj.roles, empty="none")

    @admin.display(description="CPU flags")
    def cpu_flags_list(self, obj: Node) -> str:
        return data_table(obj.cpu_flags)

    @admin.display(description="notes")
    def notes_list(self, obj: Node) -> str:
        return data_table(obj.notes, empty="none")


@admin.register(Node)
class NodeAdmin(NodeDisplay, admin.ModelAdmin):
    list_display = (
        "name", "cluster", "ready", "schedulable", "accelerator_type", "accelerator_model", "accelerator_count",
        "free_accelerators", "memory", "cpu_model", "updated_at",
    )  # fmt: skip
    list_filter = ("cluster", "accelerator_type", "accelerator_model", "ready", "schedulable")
    search_fields = ("name", "accelerator_model", "cpu_model", "cluster__name")
    list_select_related = ("cluster",)
    fieldsets = (
        (None, {"fields": ("cluster", "name", "ready", "schedulable", "cordoned", "taints_table", "roles_list",
                           "internal_ip", "updated_at")}),
        ("Accelerators", {"fields": ("accelerator_type", "accelerator_vendor", "accelerator_model",
                                     "accelerator_resource", "accelerator_count", "free_accelerators",
                                     "accelerator_memory", "mig_table", "driver_version", "cuda_version")}),
        ("CPU and memory", {"fields": ("cpu_vendor", "cpu_model", "cpu_family", "cpu_cores", "cpu_threads",
                                       "memory", "free_memory", "free_cpu", "pods", "kernel_version",
                                       "cpu_flags_list")}),
        ("Resources", {"fields": ("allocatable_table", "requested_table")}),
        ("Collection", {"fields": ("notes_list", "fingerprint")}),
    )  # fmt: skip

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("cluster").defer("cluster__kubeconfig")

    def get_readonly_fields(self, request, obj=None):
        return [name for _title, options in self.fieldsets for name in options["fields"]]

    def has_add_permission(self, request) -> bool:
        return False  # the inventory comes from the cluster (collect-node-info)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the next refresh would overwrite any edit: the page is read-only (no Save button)

    def has_delete_permission(self, request, obj=None) -> bool:
        # A row mirrors a node of the cluster: deleting it removes nothing there (the next refresh brings it
        # back) and only hides the node from placement meanwhile. Cordon or remove the node in Kubernetes.
        return False


class NodeInline(NodeDisplay, ReadOnlyInline):
    model = Node
    show_change_link = True
    fields = ("name", "ready", "schedulable", "accelerator_type", "accelerator_model", "accelerator_count",
              "free_accelerators", "accelerator_memory", "memory", "free_memory", "taints_table")  # fmt: skip
    readonly_fields = fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # nothing to edit here: the page shows no Save button for the inline's sake


class ClusterInventoryAdmin(ClusterAdmin):
    """The clusters admin with node and accelerator counts in the list, each cluster's capacity at the top of its
    page, its nodes inline and the node collection action."""

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

    def overview_sections(self, request, obj: Cluster) -> list[OverviewSection]:
        sections = super().overview_sections(request, obj)
        if not request.user.has_perm("hardware.view_node"):
            return sections
        capacity = accelerators_by_model(Node.objects.filter(cluster=obj))[obj.pk]
        widest = max((m["total"] for m in capacity["models"]), default=0)
        for model in capacity["models"]:
            model["bars"] = capacity_bars(model["total"], model["free"], widest)
            mib = model["memory_mib"]
            model["memory"] = human_bytes(mib * 1024**2) if mib else "-"
        capacity["memory"] = human_bytes(capacity["memory_bytes"])
        capacity["free_memory"] = human_bytes(capacity["free_memory_bytes"])
        sections.append(
            OverviewSection(
                20, "cluster-capacity", "Capacity", "admin/hardware/cluster_capacity.html", capacity
            )
        )
        return sections

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
