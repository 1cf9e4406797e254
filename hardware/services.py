"""Hardware domain functions: start a collection run, refresh a cluster's inventory (one cluster, or every
available one on the beat), and the capacity views the API shows.

``start_collection`` is the one way to start the ``hardware.collect`` run (API, admin action): it owns which
clusters may be collected and the permission it takes.

``refresh_inventory`` reads every Node and every non-terminated Pod once, parses nodes with the pure
``hardware.inventory`` parser, subtracts what bound pods request (``hardware.pods``, so "free GPUs" is true), and
writes all rows in one bulk upsert plus one delete for nodes that left. Query count does not depend on the number
of nodes. ``refresh_nodes`` does the same for a few named nodes: what a deployment's pods take shows in the free
counts as soon as they are bound (``deployments.health`` calls it when its pods' nodes change), not at the next
periodic refresh.

``cluster_summaries`` is what the cluster API shows per cluster; ``HardwareConfig.ready`` registers it with
``clusters.extensions``, so clusters never imports this app.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from clusters.services import gateway_for
from core import events as core_events
from core.errors import Refused
from core.gateway import ClusterGateway, GatewayError
from core.models import Run
from core.sweep import sweep_each
from core.workflow import get_workflow

from .inventory import NodeInventory, parse_node
from .models import Node
from .pods import requested_by_pods
from .vendors.nvidia import mig_resource

logger = logging.getLogger(__name__)

# The permission that starts a collection, in the API (``permission_map``) and in the admin action alike.
COLLECT_PERMISSION = "hardware.add_node"
# Clusters whose nodes may be collected: registered ones. A cluster that stopped answering may be collected
# (the run waits for it up to its deadline); registration collects by itself at its end, and a cluster being
# provisioned or deleted, or in error, has nothing to collect from.
COLLECTABLE = frozenset({ClusterStatus.AVAILABLE, ClusterStatus.NOT_AVAILABLE})


class CollectionRefused(Refused):
    """Node collection is refused for a cluster; the message says why."""

    class Code(models.TextChoices):
        CLUSTER_NOT_READY = (
            "cluster_not_ready",
            "The cluster is not available (registering, deleting or in error)",
        )

    default_status = 409


def start_collection(cluster: Cluster, *, user: Any = None) -> Run:
    """Start the ``hardware.collect`` run: roll out the collectors, wait for them on every node, store the
    inventory. Refuses (409 ``cluster_not_ready``) a cluster that is neither available nor not available."""
    if cluster.status not in COLLECTABLE:
        raise CollectionRefused(
            f"cluster {cluster.name} is {cluster.status}; it must be available",
            code=CollectionRefused.Code.CLUSTER_NOT_READY,
        )
    return get_workflow("hardware.collect").launch(
        subject=cluster, params={"cluster_id": cluster.pk}, user=user
    )


UPDATE_FIELDS = [
    "ready", "schedulable", "cordoned", "taints", "internal_ip", "roles", "cpu_vendor", "cpu_model",
    "cpu_family", "cpu_cores", "cpu_threads", "cpu_flags", "memory_bytes", "accelerator_type",
    "accelerator_vendor", "accelerator_model", "accelerator_resource", "accelerator_count",
    "accelerator_memory_mib", "mig", "driver_version", "cuda_version", "kernel_version", "allocatable",
    "requested", "free_accelerators", "free_cpu_millicores", "free_memory_bytes", "pods", "notes", "fingerprint",
    "updated_at",
]  # fmt: skip


def row_values(inv: NodeInventory, requested: dict) -> dict[str, Any]:
    """The stored columns of one node, from its parsed inventory and the requests of the pods bound to it."""
    alloc = inv.allocatable or {}
    resource = inv.accelerator_resource
    held = requested.get("resources", {}).get(resource, 0) if resource else 0
    alloc_devices = alloc.get("accelerators", inv.accelerator_count) if resource else 0
    return {
        "ready": inv.ready,
        "schedulable": inv.schedulable,
        "cordoned": inv.cordoned,
        "taints": inv.taints,
        "internal_ip": inv.internal_ip or "",
        "roles": inv.roles,
        "cpu_vendor": inv.cpu_vendor,
        "cpu_model": inv.cpu_model,
        "cpu_family": inv.cpu_family,
        "cpu_cores": inv.cpu_cores,
        "cpu_threads": inv.cpu_threads,
        "cpu_flags": inv.cpu_flags,
        "memory_bytes": inv.memory_bytes,
        "accelerator_type": inv.accelerator_type,
        "accelerator_vendor": inv.accelerator_vendor,
        "accelerator_model": inv.accelerator_model,
        "accelerator_resource": resource,
        "accelerator_count": inv.accelerator_count,
        "accelerator_memory_mib": inv.accelerator_memory_mib,
        "mig": inv.mig,
        "driver_version": inv.driver_version,
        "cuda_version": inv.cuda_version,
        "kernel_version": inv.kernel_version,
        "allocatable": alloc,
        "requested": {k: v for k, v in requested.items() if k != "skipped"},
        "free_accelerators": max(0, int(alloc_devices or 0) - int(held)),
        "free_cpu_millicores": max(
            0, int(alloc.get("cpu_millicores") or 0) - int(requested.get("cpu_millicores", 0))
        ),
        "free_memory_bytes": max(
            0, int(alloc.get("memory_bytes") or 0) - int(requested.get("memory_bytes", 0))
        ),
        "pods": int(requested.get("pods", 0)),
        "notes": inv.notes,
    }


def _fingerprint(values: dict) -> str:
    return hashlib.blake2b(
        json.dumps(values, sort_keys=True, default=str).encode(), digest_size=16
    ).hexdigest()


_NO_PODS = {"pods": 0, "cpu_millicores": 0, "memory_bytes": 0, "resources": {}}


def store_inventory(cluster: Cluster, nodes: list[dict], pods: list[dict]) -> dict:
    """Parse every node; upsert the new and changed ones in bulk; remove nodes that left. Returns counts.

    Unchanged nodes (same fingerprint of the parsed values) are not written at all, so the periodic refresh of
    a large, quiet cluster costs the parse and one read.
    """
    by_node: dict[str, list[dict]] = defaultdict(list)
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            by_node[node_name].append(pod)
    now = timezone.now()
    previous = list(
        Node.objects.filter(cluster=cluster).values_list(
            "name", "fingerprint", "accelerator_count", "free_accelerators"
        )
    )
    existing = {name: fingerprint for name, fingerprint, _, _ in previous}
    seen: set[str] = set()
    changed: list[dict] = []
    totals = {"ready": 0, "accelerators": 0, "free_accelerators": 0}
    for obj in nodes:
        inv = parse_node(obj)
        if not inv.node or inv.node in seen:
            continue
        seen.add(inv.node)
        node_pods = by_node.get(inv.node)
        values = row_values(inv, requested_by_pods(inv.node, node_pods) if node_pods else _NO_PODS)
        totals["ready"] += values["ready"]
        totals["accelerators"] += values["accelerator_count"] or 0
        totals["free_accelerators"] += values["free_accelerators"]
        fingerprint = _fingerprint(values)
        if existing.get(inv.node) != fingerprint:
            changed.append({"name": inv.node, "fingerprint": fingerprint, "updated_at": now, **values})
    removed_names = [name for name in existing if name not in seen]
    with transaction.atomic():
        if changed:
            _upsert(cluster.pk, changed)
        removed = 0
        if removed_names:
            removed, _ = Node.objects.filter(cluster=cluster, name__in=removed_names).delete()
        before = {
            "accelerators": sum(count or 0 for _, _, count, _ in previous),
            "free_accelerators": sum(free or 0 for _, _, _, free in previous),
        }
        added = sorted(seen - existing.keys())
        if added or removed_names or any(before[k] != totals[k] for k in before):
            core_events.emit(
                "cluster.inventory.changed",
                f"clusters/{cluster.pk}",
                {
                    "cluster": cluster.pk,
                    "name": cluster.name,
                    "nodes": len(seen),
                    "added": added[:100],
                    "removed": sorted(removed_names)[:100],
                    "changed": len(changed),
                    "gpus": totals["accelerators"],
                    "gpus_free": totals["free_accelerators"],
                    "previous": {
                        "nodes": len(previous),
                        "gpus": before["accelerators"],
                        "gpus_free": before["free_accelerators"],
                    },
                },
            )
    return {"nodes": len(seen), "changed": len(changed), "removed": removed, **totals}


def _upsert(cluster_id: int, rows: list[dict]) -> None:
    """Insert or update node rows. PostgreSQL: COPY into a temporary table, then one INSERT … ON CONFLICT.

    Hand-written because Django's bulk_create builds a model instance per row and binds every value as a
    parameter; for a 20,000-node refresh that was most of the time. COPY streams the rows as text (JSON columns
    as JSON text, which PostgreSQL parses into jsonb). Other databases (the embedded SQLite) use bulk_create.
    """
    if connection.vendor != "postgresql":
        Node.objects.bulk_create(
            [Node(cluster_id=cluster_id, **row) for row in rows],
            batch_size=500,
            update_conflicts=True,
            unique_fields=["cluster", "name"],
            update_fields=UPDATE_FIELDS,
        )
        return
    columns = ["cluster_id", "name", *UPDATE_FIELDS]
    json_columns = {f.name for f in Node._meta.fields if isinstance(f, models.JSONField)}
    table = Node._meta.db_table
    quoted = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in UPDATE_FIELDS)
    with connection.cursor() as cursor:
        # ON COMMIT DROP ends it with the transaction; a second upsert in the same transaction (a full refresh, then
        # the nodes a deployment's pods landed on) finds the first one's table still there.
        cursor.execute(f'DROP TABLE IF EXISTS "tmp_{table}"')
        cursor.execute(f'CREATE TEMP TABLE "tmp_{table}" (LIKE "{table}") ON COMMIT DROP')
        cursor.execute(f'ALTER TABLE "tmp_{table}" DROP COLUMN "id"')
        with cursor.cursor.copy(f'COPY "tmp_{table}" ({quoted}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(
                    [
                        cluster_id if c == "cluster_id" else
                        (json.dumps(row[c]) if c in json_columns and row[c] is not None else row[c])
                        for c in columns
                    ]
                )  # fmt: skip
        # Identifiers come from the model's own metadata; every value went through COPY.
        upsert = (
            f'INSERT INTO "{table}" ({quoted}) SELECT {quoted} FROM "tmp_{table}" '  # noqa: S608
            f'ON CONFLICT ("cluster_id", "name") DO UPDATE SET {updates}'
        )
        cursor.execute(upsert)


def refresh_inventory(cluster: Cluster, gateway: ClusterGateway) -> dict:
    """Read the cluster's nodes and running pods through the gateway and store the inventory."""
    nodes = gateway.list("v1", "Node")
    pods = gateway.list("v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed")
    return store_inventory(cluster, nodes, pods)


def refresh_nodes(cluster: Cluster, gateway: ClusterGateway, names: Iterable[str]) -> int:
    """Re-read the named nodes and the pods bound to each, and store their rows (other nodes are untouched).

    One read of each node and one list of its pods (field selector ``spec.nodeName``), so it is cheap enough to run
    whenever a workload's pods land on or leave nodes. A node that is gone is left to the full refresh, which also
    removes its row. Returns the number of rows written."""
    rows = []
    now = timezone.now()
    for name in sorted({n for n in names if n}):
        obj = gateway.get_or_none("v1", "Node", name)
        if obj is None:
            continue
        pods = gateway.list(
            "v1", "Pod", field_selector=f"spec.nodeName={name},status.phase!=Succeeded,status.phase!=Failed"
        )
        inv = parse_node(obj)
        if not inv.node:
            continue
        values = row_values(inv, requested_by_pods(inv.node, pods) if pods else _NO_PODS)
        rows.append({"name": inv.node, "fingerprint": _fingerprint(values), "updated_at": now, **values})
    if rows:
        with transaction.atomic():
            _upsert(cluster.pk, rows)
    return len(rows)


def refresh_available(*, workers: int = 8) -> dict:
    """Refresh the inventory of every available cluster, ``workers`` at a time (the periodic beat task).

    Returns ``{"refreshed": n, "failed": {cluster name: why}}``; one cluster's failure is only its own.
    """
    clusters = list(Cluster.objects.filter(status=ClusterStatus.AVAILABLE))
    results = sweep_each(clusters, _refresh_one, workers=workers, name="inventory-refresh")
    for cluster, outcome in results:
        if isinstance(outcome, BaseException) and not isinstance(outcome, GatewayError):
            # An unreachable or refusing cluster is routine; anything else is a bug worth its traceback.
            logger.error("inventory refresh of %s failed unexpectedly", cluster.name, exc_info=outcome)
    failed = {
        cluster.name: str(outcome) or type(outcome).__name__
        for cluster, outcome in results
        if isinstance(outcome, BaseException)
    }
    return {"refreshed": len(results) - len(failed), "failed": failed}


def _refresh_one(cluster: Cluster) -> dict:
    with gateway_for(cluster, timeout=30, reuse=False) as gw:  # threads: no shared clients
        return refresh_inventory(cluster, gw)


def cluster_summaries(cluster_ids: list[int]) -> dict[int, dict]:
    """Per cluster: nodes, ready nodes, accelerators by model (total and free). One query for any page: node
    counts and accelerator sums grouped by cluster and accelerator model, added up per cluster here."""
    if not cluster_ids:
        return {}
    summary: dict[int, dict[str, Any]] = {
        cid: {"nodes": 0, "ready_nodes": 0, "gpus": {}, "total_gpus": 0, "free_gpus": 0}
        for cid in cluster_ids
    }
    with_devices = Q(accelerator_count__gt=0)
    rows = (
        Node.objects.filter(cluster_id__in=cluster_ids)
        .order_by()  # Meta.ordering (cluster, name) would join the clusters table for nothing
        .values("cluster_id", "accelerator_type", "accelerator_model")
        .annotate(
            nodes=Count("id"),
            ready=Count("id", filter=Q(ready=True)),
            device_nodes=Count("id", filter=with_devices),
            total=Sum("accelerator_count", filter=with_devices),
            free=Sum("free_accelerators", filter=with_devices),
        )
    )
    for row in rows:
        entry = summary[row["cluster_id"]]
        entry["nodes"] += row["nodes"]
        entry["ready_nodes"] += row["ready"]
        if not row["device_nodes"]:
            continue
        model = row["accelerator_model"] or f"unknown {row['accelerator_type']}"
        entry["gpus"][model] = {"type": row["accelerator_type"], "total": row["total"], "free": row["free"]}
        entry["total_gpus"] += row["total"]
        entry["free_gpus"] += row["free"]
    return summary


def device_info(cluster: Cluster) -> list[dict]:
    """Per node: its devices with total and free counts (the summary placement uses)."""
    out = []
    for node in Node.objects.filter(cluster=cluster).order_by("name"):
        devices = []
        if node.accelerator_count:
            devices.append(
                {
                    "type": node.accelerator_type,
                    "vendor": node.accelerator_vendor,
                    "model": node.accelerator_model,
                    "memory_mib": node.accelerator_memory_mib,
                    "total": node.accelerator_count,
                    "free": node.free_accelerators,
                }
            )
        for profile, count in (node.mig or {}).items():
            resource = mig_resource(profile, node.accelerator_model)
            if resource == node.accelerator_resource and node.accelerator_count:
                continue  # MIG single strategy: the slices are the node's nvidia.com/gpu devices, listed above
            held = (node.requested.get("resources") or {}).get(resource, 0)
            devices.append(
                {
                    "type": "cuda-mig",
                    "vendor": "NVIDIA",
                    "model": profile,
                    "total": count,
                    "free": max(0, count - held),
                }
            )
        out.append(
            {
                "node": node.name,
                "ready": node.ready,
                "schedulable": node.schedulable,
                "devices": devices,
                "cpu": {
                    "vendor": node.cpu_vendor,
                    "model": node.cpu_model,
                    "cores": node.cpu_cores,
                    "flags": node.cpu_flags,
                    "free_millicores": node.free_cpu_millicores,
                },
                "memory": {"total_bytes": node.memory_bytes, "free_bytes": node.free_memory_bytes},
            }
        )
    return out


# Collector DaemonSets (by name suffix) and the label prefix each publishes on the nodes its pods run on.
COLLECTOR_LABEL_PREFIXES = {
    "nfd-worker": "feature.node.kubernetes.io/",
    "gpu-feature-discovery": "nvidia.com/gpu.",
    "amd-gpu-labeller": "amd.com/gpu.",
}


def unlabelled_nodes(gw: ClusterGateway, namespace: str, daemonsets: dict[str, dict]) -> list[str]:
    """Nodes a collector serves that do not carry the labels it publishes yet (``daemonsets``: the collector
    DaemonSets as just read, by name).

    A collector serves the nodes where its pod is ready, and every node its DaemonSet's nodeSelector matches
    (GPU feature discovery's selector is a label NFD publishes: its DaemonSet grows only after NFD ran)."""
    nodes = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}) for n in gw.list("v1", "Node")}
    missing: set[str] = set()
    for name, ds in daemonsets.items():
        prefix = next((p for suffix, p in COLLECTOR_LABEL_PREFIXES.items() if name.endswith(suffix)), None)
        if prefix is None:
            continue
        spec = (ds or {}).get("spec") or {}
        served = set()
        node_selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
        if node_selector:
            served |= {
                node
                for node, labels in nodes.items()
                if all(labels.get(k) == v for k, v in node_selector.items())
            }
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        for pod in gw.list("v1", "Pod", namespace, label_selector=selector) if selector else []:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (pod.get("status") or {}).get("conditions") or []
            )
            if ready and (pod.get("spec") or {}).get("nodeName") in nodes:
                served.add(pod["spec"]["nodeName"])
        missing |= {node for node in served if not any(k.startswith(prefix) for k in nodes[node])}
    return sorted(missing)
