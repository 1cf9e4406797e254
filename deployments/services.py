"""Deployment actions: plan, deploy, day-2 changes, delete, and the rules each step of their runs applies.

The API, the admin, the management commands and the workflow steps all call these; each action owns its
eligibility rule and refuses with a ``DeploymentRefused`` carrying a stable code. Runs are started by kind
(``core.workflow.get_workflow``; the workflows are declared in ``deployments/workflows.py``, whose step bodies call
the functions at the end of this module and only translate their errors). Chart values and the vLLM flags are in
``deployments/charts.py``; reading pods, readiness, the endpoint and health in ``deployments/health.py``.

* **Plan** (`plan`) is a dry run: the stored inventory → `placement.plan_placement` → the chart values of the best
  candidate → both charts rendered with the Helm engine → memory breakdown and an estimated time per step. Nothing
  is written anywhere.
* **Fleet plan** (`plan_fleet`): a request that names no cluster is planned on every available cluster at once
  (``placement_fleet.plan_fleet`` on the inventory of all clusters, read in two queries): ranked candidates, one per
  cluster, and each refused cluster's reason; the best cluster then gets the full single-cluster plan, so the
  answer is the single-cluster one plus ``cluster``, ``cluster_name`` and ``fleet``. `start_fleet_deploy` deploys
  on the best cluster (clusters where the name is taken are left out).
* **Deploy** (`start_deploy`) plans the same way first, so a model that fits nowhere is refused with per-node
  reasons before anything exists (no Deployment row, no run, no cluster object). Otherwise it stores the
  Deployment (credentials from the request encrypted on the row, never in run params) and launches the
  ``deployment.deploy`` run, which re-plans on a freshly read inventory.
* **Day 2**: `start_update` (replicas, engine args, image → a new revision of the runtime release, rolled out),
  `start_rollback` (a stored revision re-applied as a new one, helm-style), `start_delete` (every release
  uninstalled, the namespace deleted). Revisions are the ``clusters.Revision`` rows of ``Deployment.release``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from clusters.choices import ClusterStatus, ReleaseStatus
from clusters.models import Cluster, Release, Revision
from clusters.releases import install_or_upgrade, rollback, uninstall
from core import events as core_events
from core import helm
from core.choices import RunStatus
from core.errors import Refused
from core.gateway import ClusterGateway
from core.models import Run, recorded_user
from core.workflow import get_workflow, request_cancel
from hardware.models import Node
from hardware.services import refresh_inventory

from . import charts, placement_fleet
from . import placement as placement_engine
from .catalog import resolve_model
from .charts import (
    DEPLOYMENT_LABEL,
    HF_SECRET,
    RUNTIME_CHART,
    S3_SECRET,
    TRANSFER_CHART,
    TRANSFER_JOB,
    TRANSFER_RELEASE,
    runtime_chart_values,
    runtime_release_name,
    sanitise,
    transfer_chart_values,
)
from .choices import DeploymentStatus, ModelSource
from .models import NAMESPACE_MAX_NAME, Deployment, DeploymentEvent, Worker


class DeploymentRefused(Refused):
    """A deployment request (plan, deploy, update, rollback, delete) or a run's step is refused; the message says
    why. A deploy that fits nowhere carries the placement report (``refusals``, ``estimate``) as extra data."""

    class Code(models.TextChoices):
        INVALID_REQUEST = "invalid_request", "The model, dtype, context or another setting is invalid"
        CHART_REJECTED = "chart_rejected", "The chart refused the values the request leads to"
        INVALID_SOURCE = "invalid_source", "The model source lacks what it needs (S3 keys)"
        CLUSTER_UNAVAILABLE = "cluster_unavailable", "The cluster is not available"
        NO_FIT = "no_fit", "The model fits on no node (per-node reasons given)"
        NO_CLUSTER = "no_cluster", "No cluster is available to place on (a request that names no cluster)"
        NOT_RUNNING = "not_running", "The deployment is not running yet"
        NO_RUNTIME = "no_runtime", "The deployment has no installed runtime"
        RUN_IN_PROGRESS = "run_in_progress", "Another run of the deployment is in progress"
        NOTHING_TO_CHANGE = "nothing_to_change", "Replicas, engine args and image are as they are"
        NO_SUCH_REVISION = "no_such_revision", "The deployment has no such revision"
        NAME_TAKEN = "name_taken", "A live deployment on the cluster has this name"
        ALREADY_DELETING = "already_deleting", "The deployment is being deleted"
        ALREADY_DELETED = "already_deleted", "The deployment is deleted"


Code = DeploymentRefused.Code


# --- names and namespace -----------------------------------------------------------------------------------------


def namespace_for(name: str) -> str:
    """``bud-<sanitised name, ≤ 50>-<8 hex>`` (the original service's naming)."""
    return f"bud-{sanitise(name, NAMESPACE_MAX_NAME)}-{secrets.token_hex(4)}"


def namespace_object(deployment: Deployment) -> dict:
    """The deployment's Namespace: labelled for BudCluster and with the Pod Security level its pods run under
    (enforce ``DEPLOY_POD_SECURITY_LEVEL``; warn and audit at "restricted", so operators see what tightening
    would break)."""
    level = str(getattr(settings, "DEPLOY_POD_SECURITY_LEVEL", "baseline"))
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": deployment.namespace,
            "labels": {
                DEPLOYMENT_LABEL: str(deployment.pk),
                "app.kubernetes.io/managed-by": "budcluster",
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


# --- request → placement -----------------------------------------------------------------------------------------


@dataclass
class PlanOutcome:
    """A plan: the placement (or the refusal), chart values and manifests, memory breakdown and time estimate."""

    ok: bool
    placement: dict = field(default_factory=dict)
    refusal: dict = field(default_factory=dict)
    runtime_values: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    eta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        if not self.ok:
            return {"feasible": False, "warnings": self.warnings, **self.refusal}
        estimate = self.placement["result"]["estimate"]
        return {
            "feasible": True,
            "warnings": self.warnings,
            "placement": self.placement["candidate"],
            "alternatives": self.placement["result"]["candidates"][1:6],
            "memory": estimate,
            "refusals": self.placement["result"]["refusals"],
            "refusals_total": self.placement["result"]["refusals_total"],
            "values": self.runtime_values,
            "manifests": self.manifests,
            "estimated_seconds": self.eta,
            "estimated_total_seconds": round(sum(self.eta.values()), 1),
        }


def context_len_for(spec, config: dict) -> int:
    if config.get("context_len"):
        return int(config["context_len"])
    if config.get("input_tokens") and config.get("output_tokens"):
        return placement_engine.max_model_len_for(
            spec, int(config["input_tokens"]), int(config["output_tokens"])
        )
    return min(4096, spec.max_context)


def place(config: dict, nodes: list, *, replicas: int | None = None, device_type: str | None = None):
    """``plan_placement`` for a stored request config (ValueError for bad input, PlacementError if none fits)."""
    spec = resolve_model(config["model"])
    return placement_engine.plan_placement(
        spec,
        dtype=config.get("dtype") or "auto",
        quantization=config.get("quantization") or None,
        context_len=context_len_for(spec, config),
        concurrency=int(config.get("concurrency") or 16),
        device_type=device_type or config.get("device_type") or "auto",
        replicas=replicas if replicas is not None else int(config.get("replicas") or 1),
        nodes=nodes,
        gpu_memory_utilization=float(
            config.get("gpu_memory_utilization") or placement_engine.DEFAULT_GPU_MEMORY_UTILIZATION
        ),
        max_tp=config.get("max_tp") or None,
    )


def placement_record(result, config: dict | None = None) -> dict:
    """What a deployment keeps of a placement: the chosen candidate, the estimate, the runtime values (with the
    request's ``served_model_name`` when it gives one)."""
    return {
        "candidate": result.best.as_dict(),
        "result": result.as_dict(max_refusals=50),
        "runtime": charts.runtime_values(result, served_model_name=(config or {}).get("served_model_name")),
    }


def refusal_record(exc: placement_engine.PlacementError) -> dict:
    return exc.as_dict(max_refusals=200)


def eta_seconds(config: dict, weights_bytes: int, device_type: str) -> dict[str, float]:
    """Estimated seconds per deploy step (the original: verify 0.5, transfer 5, deploy 1, verify 5 min),
    scaled by the weights' size and slower on CPU."""
    gib = weights_bytes / placement_engine.GIB
    slow = 2.0 if device_type == "cpu" else 1.0
    transfer = 0.0 if config.get("source") == ModelSource.NONE else 30 + weights_bytes / 200e6
    return {
        "verify_cluster": 2.0,
        "place": 3.0,
        "namespace": 1.0,
        "secrets": 1.0,
        "transfer": round(transfer, 1),
        "install": 3.0,
        "wait_ready": round((30 + 4 * gib) * slow, 1),
        "verify_endpoint": 5.0,
        "benchmark": 60.0 if config.get("benchmark") else 0.0,
    }


def timeouts(config: dict, weights_bytes: int) -> dict[str, float]:
    transfer = (
        settings.DEPLOY_TRANSFER_BASE_TIMEOUT + weights_bytes / settings.DEPLOY_TRANSFER_MIN_BYTES_PER_SECOND
    )
    return {
        "transfer": float(
            config.get("transfer_timeout") or min(transfer, settings.DEPLOY_TRANSFER_MAX_TIMEOUT)
        ),
        "ready": float(config.get("ready_timeout") or settings.DEPLOY_READY_TIMEOUT),
        "verify_interval": float(settings.DEPLOY_VERIFY_INTERVAL),
        "verify": float(settings.DEPLOY_VERIFY_INTERVAL) * int(settings.DEPLOY_VERIFY_TRIES),
    }


# The Node columns placement reads (values() rows: no model instances, which cost more than the planning itself).
NODE_FIELDS = (
    "cluster_id", "name", "ready", "schedulable", "accelerator_type", "accelerator_vendor", "accelerator_model",
    "accelerator_count", "free_accelerators", "accelerator_memory_mib", "cpu_cores", "free_cpu_millicores",
    "memory_bytes", "free_memory_bytes", "cpu_flags", "taints",
)  # fmt: skip


def node_capacity(row: dict) -> placement_engine.NodeCapacity:
    """One stored Node (its ``NODE_FIELDS``) as placement input."""
    return placement_engine.NodeCapacity(
        name=row["name"],
        ready=row["ready"],
        schedulable=row["schedulable"],
        accelerator_type=row["accelerator_type"],
        accelerator_vendor=row["accelerator_vendor"] or "",
        accelerator_model=row["accelerator_model"] or "",
        device_count=row["accelerator_count"] or 0,  # unknown (null) offers nothing to place on
        free_devices=row["free_accelerators"],
        device_memory_mib=row["accelerator_memory_mib"] or 0,
        cpu_cores=row["cpu_cores"] or 0,
        free_cpu_millicores=row["free_cpu_millicores"],
        memory_bytes=row["memory_bytes"] or 0,
        free_memory_bytes=row["free_memory_bytes"],
        cpu_flags=frozenset(row["cpu_flags"] or ()),
        taints=tuple(_taint_text(t) for t in row["taints"] or []),
    )


def node_capacities(cluster: Cluster) -> list[placement_engine.NodeCapacity]:
    """The stored inventory (``hardware``'s Node rows) as placement input."""
    return [node_capacity(row) for row in Node.objects.filter(cluster=cluster).values(*NODE_FIELDS)]


def _taint_text(taint: dict) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


# --- plan (dry run) ----------------------------------------------------------------------------------------------


def plan(cluster: Cluster, config: dict, *, nodes: list | None = None, name: str = "preview") -> PlanOutcome:
    """Dry run on the stored inventory: placement or per-node refusals, manifests, memory, ETA. Writes nothing.

    An invalid request (bad model, dtype, context, ...) or values the charts refuse raise DeploymentRefused. A
    cluster that is not available is planned all the same (on the inventory last stored), with a warning: the
    inventory may be stale, and a deploy would be refused until the cluster is available again.
    """
    warnings = plan_warnings(cluster)
    try:
        result = place(config, nodes if nodes is not None else node_capacities(cluster))
    except placement_engine.PlacementError as exc:
        return PlanOutcome(ok=False, refusal=refusal_record(exc), warnings=warnings)
    except ValueError as exc:
        raise DeploymentRefused(str(exc), code=Code.INVALID_REQUEST) from None
    record = placement_record(result, config)
    runtime = record["runtime"]
    namespace = f"bud-{sanitise(name, NAMESPACE_MAX_NAME)}-xxxxxxxx"
    has_hf = bool((config.get("_has_credentials") or {}).get("hf_token"))
    values = runtime_chart_values(
        deployment_id="preview",
        config=config,
        runtime=runtime,
        replicas=result.replicas,
        engine_args=config.get("engine_args") or [],
        image=config.get("image") or "",
        has_hf_secret=has_hf,
        ingress_host=charts.ingress_host(cluster, namespace),
    )
    manifests = {}
    try:
        manifests["runtime"], _ = helm.render(
            RUNTIME_CHART, values, release=sanitise(name, 40), namespace=namespace
        )
        if charts.with_storage(config):
            manifests["transfer"], _ = helm.render(
                TRANSFER_CHART,
                transfer_chart_values(config, runtime, result.estimate.weights_bytes, has_secret=has_hf),
                release=TRANSFER_RELEASE,
                namespace=namespace,
            )
    except helm.ChartError as exc:
        raise DeploymentRefused(str(exc), code=Code.CHART_REJECTED) from None
    return PlanOutcome(
        ok=True,
        placement=record,
        runtime_values=values,
        manifests=manifests,
        eta=eta_seconds(config, result.estimate.weights_bytes, result.best.device_type),
        warnings=warnings,
    )


def plan_warnings(cluster: Cluster) -> list[str]:
    """What may make a plan on ``cluster`` misleading: it is not available (not answering, in error, ...)."""
    if cluster.status == ClusterStatus.AVAILABLE:
        return []
    since = ""
    if cluster.status == ClusterStatus.NOT_AVAILABLE and cluster.not_available_since:
        since = f" since {cluster.not_available_since:%Y-%m-%d %H:%M} UTC"
    reason = f" ({cluster.reason})" if cluster.reason else ""
    return [
        f"cluster {cluster.name} is {cluster.status}{since}{reason}: this plan uses the inventory stored before, "
        "which may be out of date, and a deploy is refused until the cluster is available again"
    ]


# --- fleet plan (no cluster named) -------------------------------------------------------------------------------


def fleet_inventory(
    *, leave_out: dict[int, str] | None = None
) -> tuple[dict[int, Cluster], list[placement_fleet.ClusterInventory]]:
    """Every cluster and the stored nodes of the available ones, in two queries whatever their number.

    Clusters that are not available are listed with the reason (a deploy there would be refused); ``leave_out``
    maps cluster ids to a reason for leaving an available cluster out too (e.g. the name is taken there).
    """
    leave_out = leave_out or {}
    clusters = {c.pk: c for c in Cluster.objects.defer("kubeconfig").order_by("name")}
    nodes: dict[int, list[placement_engine.NodeCapacity]] = {
        pk: [] for pk, c in clusters.items() if c.status == ClusterStatus.AVAILABLE and pk not in leave_out
    }
    rows = Node.objects.filter(cluster_id__in=list(nodes)) if nodes else Node.objects.none()
    for row in rows.order_by("cluster_id", "name").values(*NODE_FIELDS):
        nodes[row["cluster_id"]].append(node_capacity(row))
    inventory = []
    for pk, cluster in clusters.items():
        if pk in nodes:
            reason = ""
        elif cluster.status != ClusterStatus.AVAILABLE:
            reason = _unavailable_reason(cluster)
        else:
            reason = leave_out[pk]
        inventory.append(
            placement_fleet.ClusterInventory(
                id=pk, name=cluster.name, nodes=nodes.get(pk, ()), status=cluster.status, unavailable=reason
            )
        )
    return clusters, inventory


def _unavailable_reason(cluster: Cluster) -> str:
    since = ""
    if cluster.status == ClusterStatus.NOT_AVAILABLE and cluster.not_available_since:
        since = f" since {cluster.not_available_since:%Y-%m-%d %H:%M} UTC"
    return f"cluster is {cluster.status}{since}" + (f": {cluster.reason}" if cluster.reason else "")


def place_fleet(config: dict, inventory: list) -> placement_fleet.FleetPlacement:
    """``plan_fleet`` for a stored request config (ValueError for bad input), with ``place``'s defaults."""
    spec = resolve_model(config["model"])
    return placement_fleet.plan_fleet(
        spec,
        clusters=inventory,
        dtype=config.get("dtype") or "auto",
        quantization=config.get("quantization") or None,
        context_len=context_len_for(spec, config),
        concurrency=int(config.get("concurrency") or 16),
        device_type=config.get("device_type") or "auto",
        replicas=int(config.get("replicas") or 1),
        gpu_memory_utilization=float(
            config.get("gpu_memory_utilization") or placement_engine.DEFAULT_GPU_MEMORY_UTILIZATION
        ),
        max_tp=config.get("max_tp") or None,
    )


@dataclass
class FleetPlanOutcome:
    """A fleet plan: the ranked clusters and refusals, and the best cluster's full plan (``PlanOutcome``)."""

    fleet: placement_fleet.FleetPlacement
    cluster: Cluster | None = None
    plan: PlanOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None and self.plan.ok

    def as_dict(self) -> dict:
        """The single-cluster answer for the best cluster, plus ``cluster``, ``cluster_name`` and ``fleet``; when
        nothing fits: ``detail``, the estimate and the first node reasons over all clusters ("cluster/node: …")."""
        if self.ok:
            return {
                **self.plan.as_dict(),
                "cluster": self.cluster.pk,
                "cluster_name": self.cluster.name,
                "fleet": self.fleet.as_dict(),
            }
        return fleet_refusal_record(self.fleet)


def fleet_refusal_record(fleet: placement_fleet.FleetPlacement) -> dict:
    return {
        "feasible": False,
        "warnings": [],
        "detail": fleet.summary,
        "estimate": fleet.estimate.as_dict(),
        "refusals": fleet.node_refusals(200),
        "refusals_total": fleet.node_refusals_total,
        "fleet": fleet.as_dict(),
    }


def _fleet_placement(
    config: dict, *, leave_out: dict[int, str] | None = None
) -> tuple[dict[int, Cluster], placement_fleet.FleetPlacement, dict[int, list]]:
    clusters, inventory = fleet_inventory(leave_out=leave_out)
    try:
        fleet = place_fleet(config, inventory)
    except ValueError as exc:
        raise DeploymentRefused(str(exc), code=Code.INVALID_REQUEST) from None
    if not fleet.clusters_planned:
        # Nothing to plan on is the fleet's state, not the request's fault: say which clusters there are and why
        # none can be used.
        detail = (
            "no cluster is registered: register one first (POST /clusters/register)"
            if not clusters
            else f"no cluster is available to place on: none of the {len(clusters)} clusters is available "
            "(each one's reason in fleet.refused_clusters)"
        )
        raise DeploymentRefused(detail, code=Code.NO_CLUSTER, status=422, data=_no_detail(fleet))
    return clusters, fleet, {c.id: c.nodes for c in inventory}


def _no_detail(fleet: placement_fleet.FleetPlacement) -> dict:
    return {k: v for k, v in fleet_refusal_record(fleet).items() if k != "detail"}


def plan_fleet(config: dict, *, name: str = "preview") -> FleetPlanOutcome:
    """Dry run on every available cluster: the clusters ranked by their best placement, each refused cluster's
    reason, and the best cluster's full plan (manifests, memory, ETA). Writes nothing.

    DeploymentRefused: invalid request (400), values the charts refuse (400), no available cluster (422
    ``no_cluster``). Nothing fitting anywhere is an outcome with ``ok`` False (the API answers 422 ``no_fit``).
    """
    clusters, fleet, nodes = _fleet_placement(config)
    if not fleet.feasible:
        return FleetPlanOutcome(fleet=fleet)
    cluster = clusters[fleet.best.cluster_id]
    # The inventory already read: no further query, and the same placement the ranking found.
    return FleetPlanOutcome(
        fleet=fleet, cluster=cluster, plan=plan(cluster, config, nodes=list(nodes[cluster.pk]), name=name)
    )


# --- deploy ------------------------------------------------------------------------------------------------------

CREDENTIAL_KEYS = ("hf_token", "s3_access_key_id", "s3_secret_access_key")


def _usable_cluster(cluster: Cluster) -> None:
    if cluster.status != ClusterStatus.AVAILABLE:
        raise DeploymentRefused(
            f"cluster {cluster.name} is {cluster.status}, not available"
            + (f": {cluster.reason}" if cluster.reason else ""),
            code=Code.CLUSTER_UNAVAILABLE,
            status=409,
        )


def start_deploy(
    cluster: Cluster,
    *,
    name: str,
    config: dict,
    credentials: dict | None = None,
    keep_on_failure: bool = False,
    user: Any = None,
) -> tuple[Deployment, Run]:
    """Plan on the stored inventory, then store the deployment and launch the deploy run.

    A model that fits nowhere raises DeploymentRefused (422, ``no_fit``) with the per-node refusals; nothing is
    created. ``config`` must not hold credentials: they go in ``credentials`` and are stored encrypted on the row.
    """
    _usable_cluster(cluster)
    _refuse_taken_name(cluster, name)
    creds = {k: v for k, v in (credentials or {}).items() if k in CREDENTIAL_KEYS and v}
    if config.get("source") == ModelSource.S3 and not (
        creds.get("s3_access_key_id") and creds.get("s3_secret_access_key")
    ):
        raise DeploymentRefused(
            "source s3 needs s3.access_key_id and s3.secret_access_key", code=Code.INVALID_SOURCE
        )
    outcome = plan(cluster, {**config, "_has_credentials": {k: True for k in creds}}, name=name)
    if not outcome.ok:
        report = {k: v for k, v in outcome.refusal.items() if k != "detail"}
        raise DeploymentRefused(outcome.refusal["detail"], code=Code.NO_FIT, status=422, data=report)
    spec = resolve_model(config["model"])
    secret_names = sorted({HF_SECRET if key == "hf_token" else S3_SECRET for key in creds})
    weights = outcome.placement["result"]["estimate"]["weights_bytes"]
    device = outcome.placement["candidate"]["device_type"]
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                name=name,
                cluster=cluster,
                namespace=namespace_for(name),
                model_name=spec.name,
                model_spec=spec.as_dict(),
                device_type=config.get("device_type") or "auto",
                replicas=int(config.get("replicas") or 1),
                engine_args=list(config.get("engine_args") or []),
                image=config.get("image") or "",
                config={
                    **{k: v for k, v in config.items() if not k.startswith("_")},
                    "secret_names": secret_names,
                },
                credentials=creds or None,
                keep_on_failure=keep_on_failure,
                created_by=recorded_user(user),
            )
            record_event(deployment, "deploy", "deploy requested", new=DeploymentStatus.PENDING)
            params = {
                "deployment_id": deployment.pk,
                "eta": eta_seconds(config, weights, device),
                "timeouts": timeouts(config, weights),
                "benchmark": config.get("benchmark") or None,
                "keep_on_failure": keep_on_failure,
            }
            run = get_workflow("deployment.deploy").launch(
                subject=deployment, params=params, user=user, title=f"Deploy {name}"
            )
    except IntegrityError:
        # Another request took the name between the check above and this insert (the unique constraint).
        _refuse_taken_name(cluster, name)
        raise
    return deployment, run


def start_fleet_deploy(
    *,
    name: str,
    config: dict,
    credentials: dict | None = None,
    keep_on_failure: bool = False,
    user: Any = None,
) -> tuple[Deployment, Run]:
    """Deploy on the best cluster of the fleet plan (a request that names no cluster); ``deployment.cluster`` is the
    one chosen. Clusters with a live deployment of this name are left out. Nothing fits anywhere: 422 ``no_fit``
    with the fleet report; no available cluster: 422 ``no_cluster``; nothing is created either way."""
    taken = Deployment.objects.filter(name=name).exclude(status=DeploymentStatus.DELETED)
    leave_out = {
        cluster_id: f"has a live deployment named {name!r} (id {pk})"
        for cluster_id, pk in taken.values_list("cluster_id", "pk")
    }
    clusters, fleet, _ = _fleet_placement(config, leave_out=leave_out)
    if not fleet.feasible:
        raise DeploymentRefused(fleet.summary, code=Code.NO_FIT, status=422, data=_no_detail(fleet))
    return start_deploy(
        clusters[fleet.best.cluster_id],
        name=name,
        config=config,
        credentials=credentials,
        keep_on_failure=keep_on_failure,
        user=user,
    )


def _refuse_taken_name(cluster: Cluster, name: str) -> None:
    """A name is one live deployment per cluster (``deployment_unique_live_name``); deleted ones free it."""
    taken = Deployment.objects.filter(cluster=cluster, name=name).exclude(status=DeploymentStatus.DELETED)
    existing = taken.values_list("pk", flat=True).first()
    if existing is not None:
        raise DeploymentRefused(
            f"cluster {cluster.name} already has a deployment named {name!r} (id {existing}); choose another name "
            "or delete that one first",
            code=Code.NAME_TAKEN,
            status=409,
            data={"deployment_id": existing},
        )


# --- day 2 -------------------------------------------------------------------------------------------------------


def _changeable(deployment: Deployment) -> None:
    if deployment.status not in (
        DeploymentStatus.RUNNING,
        DeploymentStatus.DEGRADED,
        DeploymentStatus.FAILED,
    ):
        raise DeploymentRefused(
            f"deployment {deployment.name} is {deployment.status}; wait until it is running",
            code=Code.NOT_RUNNING,
            status=409,
        )
    if deployment.release_id is None or deployment.release.status != ReleaseStatus.DEPLOYED:
        raise DeploymentRefused(
            f"deployment {deployment.name} has no installed runtime", code=Code.NO_RUNTIME, status=409
        )
    if active_run(deployment) is not None:
        raise DeploymentRefused(
            f"deployment {deployment.name} has a run in progress", code=Code.RUN_IN_PROGRESS, status=409
        )


def active_run(deployment: Deployment, kind: str = "deployment.") -> Run | None:
    """The deployment's run in progress (of ``kind``: a workflow kind, or a prefix ending in a dot)."""
    runs = Run.objects.filter(subject_id=str(deployment.pk), status__in=RunStatus.active())
    runs = runs.filter(kind__startswith=kind) if kind.endswith(".") else runs.filter(kind=kind)
    return runs.first()


def start_update(
    deployment: Deployment,
    *,
    replicas: int | None = None,
    engine_args: list[str] | None = None,
    image: str | None = None,
    user: Any = None,
) -> Run:
    """Scale and/or change engine args or image: a new revision of the runtime release, rolled out."""
    _changeable(deployment)
    changes: dict[str, Any] = {}
    if replicas is not None and replicas != deployment.replicas:
        changes["replicas"] = replicas
    if engine_args is not None and list(engine_args) != list(deployment.engine_args):
        changes["engine_args"] = list(engine_args)
    if image is not None and image != deployment.image:
        changes["image"] = image
    if not changes:
        raise DeploymentRefused(
            "nothing to change: replicas, engine_args and image are as they are", code=Code.NOTHING_TO_CHANGE
        )
    what = ", ".join(f"{k}={v}" for k, v in changes.items())
    with transaction.atomic():
        record_event(deployment, "update", f"update requested: {what}")
        return get_workflow("deployment.update").launch(
            subject=deployment,
            params={
                "deployment_id": deployment.pk,
                "changes": changes,
                "timeouts": _day2_timeouts(deployment),
            },
            user=user,
            title=f"Update {deployment.name}: {what}",
        )


def start_rollback(deployment: Deployment, revision: int, *, user: Any = None) -> Run:
    """Re-apply stored revision ``revision`` of the runtime as a new revision (helm-style)."""
    _changeable(deployment)
    if not Revision.objects.filter(release_id=deployment.release_id, number=revision).exists():
        raise DeploymentRefused(
            f"deployment {deployment.name} has no revision {revision}; its revisions are "
            f"{', '.join(str(n) for n in revisions(deployment).values_list('number', flat=True)) or 'none'}",
            code=Code.NO_SUCH_REVISION,
            # The deployment exists; the request names a state of it that does not: a conflict, not a 404.
            status=409,
        )
    with transaction.atomic():
        record_event(deployment, "rollback", f"rollback to revision {revision} requested")
        return get_workflow("deployment.rollback").launch(
            subject=deployment,
            params={
                "deployment_id": deployment.pk,
                "revision": revision,
                "timeouts": _day2_timeouts(deployment),
            },
            user=user,
            title=f"Roll {deployment.name} back to revision {revision}",
        )


def _day2_timeouts(deployment: Deployment) -> dict:
    return timeouts(deployment.config, charts.weights_bytes(deployment))


def start_delete(deployment: Deployment, *, user: Any = None) -> Run:
    """Remove every object of the deployment and its namespace; the row stays as DELETED (history).

    A deployment left DELETING without a delete run in progress (its run ended without finishing) may be
    deleted again: whatever happened to a run, its subject can always leave the state the run put it in."""
    deleting = deployment.status == DeploymentStatus.DELETING
    if deployment.status == DeploymentStatus.DELETED or (
        deleting and active_run(deployment, "deployment.delete") is not None
    ):
        code = Code.ALREADY_DELETING if deleting else Code.ALREADY_DELETED
        raise DeploymentRefused(
            f"deployment {deployment.name} is already {deployment.status}", code=code, status=409
        )
    running = active_run(deployment)
    if running is not None:
        # Deleting wins over a deploy in progress: stop it (its cleanup may run too; both are idempotent).
        request_cancel(running, reason="deployment deleted")
    with transaction.atomic():
        if not set_status(
            deployment, DeploymentStatus.DELETING, "deletion requested", kind="delete",
            only_from=NOT_BEING_DELETED | {DeploymentStatus.DELETING},
        ):  # fmt: skip
            raise DeploymentRefused(
                f"deployment {deployment.name} is already {deployment.status}",
                code=Code.ALREADY_DELETED,
                status=409,
            )
        return get_workflow("deployment.delete").launch(
            subject=deployment,
            params={"deployment_id": deployment.pk},
            user=user,
            title=f"Delete {deployment.name}",
        )


def revisions(deployment: Deployment):
    """The deployment's revisions: the runtime release's ``clusters.Revision`` rows, newest first."""
    if deployment.release_id is None:
        return Revision.objects.none()
    return Revision.objects.filter(release_id=deployment.release_id).order_by("-number")


# --- status and events -------------------------------------------------------------------------------------------


def record_event(deployment: Deployment, kind: str, message: str, *, old: str = "", new: str = "") -> None:
    """The deployment's own log row and, for a status change, the outbox event (in the caller's transaction)."""
    DeploymentEvent.objects.create(
        deployment=deployment, kind=kind, message=message[:4000], old_status=old, new_status=new
    )
    if new and new != old:
        core_events.emit(
            "deployment.status.changed",
            f"deployments/{deployment.pk}",
            {
                "deployment": deployment.pk,
                "name": deployment.name,
                "cluster": deployment.cluster_id,
                "old_status": old,
                "new_status": new,
                "reason": message[:4000],
                "kind": kind,
            },
        )


# The statuses each kind of writer may move a deployment out of (DeploymentStatus's diagram).
NOT_BEING_DELETED = frozenset(DeploymentStatus) - {DeploymentStatus.DELETING, DeploymentStatus.DELETED}


def set_status(
    deployment: Deployment,
    status: str,
    reason: str = "",
    *,
    kind: str = "status",
    only_from: Iterable[str] | None = None,
    **fields,
) -> bool:
    """Compare-and-set the status (and fields), with an event when the status changes.

    ``only_from``: the statuses this transition may leave (None: any). The UPDATE is guarded by the status just
    read, so a writer that raced this one is never overwritten blindly: on a lost race the status is read again
    and ``only_from`` applied to the new one (a deletion that came in meanwhile is kept, a health verdict is not
    written over it). Returns True if the row was written; ``deployment`` then holds what was written, else the
    status found."""
    allowed = None if only_from is None else frozenset(only_from)
    # The change, its log row and its outbox event commit together.
    with transaction.atomic():
        while True:
            old = Deployment.objects.filter(pk=deployment.pk).values_list("status", flat=True).first()
            if old is None or (allowed is not None and old not in allowed):
                if old is not None:
                    deployment.status = old
                return False
            if Deployment.objects.filter(pk=deployment.pk, status=old).update(
                status=status, reason=reason, updated_at=timezone.now(), **fields
            ):
                break
        deployment.status, deployment.reason = status, reason
        for key, value in fields.items():
            setattr(deployment, key, value)
        if old != status:
            record_event(deployment, kind, reason or f"{old} → {status}", old=old, new=status)
    return True


# --- the deploy run's rules --------------------------------------------------------------------------------------
# Called by the step bodies of deployments/workflows.py. Every one is idempotent: a step that dies halfway runs
# again. They raise DeploymentRefused for a rule that stops the run, GatewayError / ChartError from the cluster
# and the charts; the steps turn those into failed or retried steps.


def refuse_if_deleting(deployment: Deployment) -> None:
    """A run that would put objects on the cluster stops once the deployment is being deleted."""
    if deployment.status == DeploymentStatus.DELETING:
        raise DeploymentRefused("the deployment is being deleted", code=Code.ALREADY_DELETING, status=409)


def place_deployment(gw: ClusterGateway, deployment: Deployment) -> dict:
    """Read the inventory again, plan, and store the placement on the deployment (once: a re-run keeps it)."""
    if deployment.placement.get("candidate"):
        return deployment.placement
    refresh_inventory(deployment.cluster, gw)
    try:
        result = place(deployment.config, node_capacities(deployment.cluster))
    except placement_engine.PlacementError as exc:
        raise DeploymentRefused(str(exc), code=Code.NO_FIT, status=422) from None
    except ValueError as exc:
        raise DeploymentRefused(f"invalid request: {exc}", code=Code.INVALID_REQUEST) from None
    record = placement_record(result, deployment.config)
    Deployment.objects.filter(pk=deployment.pk).update(placement=record)
    deployment.placement = record
    return record


def create_namespace(gw: ClusterGateway, deployment: Deployment) -> None:
    gw.apply(namespace_object(deployment))


def secret_data(credentials: dict) -> dict[str, dict[str, str]]:
    """The Secrets (name → data) the request's credentials become; the charts read them by name."""
    wanted: dict[str, dict[str, str]] = {}
    if credentials.get("hf_token"):
        wanted[HF_SECRET] = {"token": credentials["hf_token"]}
    if credentials.get("s3_access_key_id"):
        wanted[S3_SECRET] = {
            "AWS_ACCESS_KEY_ID": credentials["s3_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": credentials.get("s3_secret_access_key", ""),
        }
    return wanted


def store_credentials(gw: ClusterGateway, deployment: Deployment) -> list[str]:
    """Credentials from the request become Kubernetes Secrets, then leave the database; returns the Secrets'
    names (only names appear in outputs and values; the charts read the Secrets by ``existingSecret``)."""
    wanted = secret_data(deployment.credentials or {})
    labels = {DEPLOYMENT_LABEL: str(deployment.pk), "app.kubernetes.io/managed-by": "budcluster"}
    for name, data in wanted.items():
        gw.create_secret(deployment.namespace, name, data, labels=labels)
    if deployment.credentials is not None:
        Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
    # After a re-run the credentials are already gone from the row: report what the config says exists.
    return sorted(wanted) or list(deployment.config.get("secret_names") or [])


def start_transfer(gw: ClusterGateway, deployment: Deployment) -> dict:
    """Install the transfer chart (a PVC sized for the weights and the copy Job); the run then waits on the Job.
    With source ``none`` there is nothing to copy: the engine downloads the model itself."""
    if not charts.with_storage(deployment.config):
        return {"skipped": "source none: the engine downloads the model itself"}
    revision = install_or_upgrade(
        gw, deployment.cluster, chart=TRANSFER_CHART, release=TRANSFER_RELEASE, namespace=deployment.namespace,
        values=charts.deployment_transfer_values(deployment), description="model transfer",
    )  # fmt: skip
    return {"job": TRANSFER_JOB, "revision": revision.number, "bytes_total": charts.weights_bytes(deployment)}


def install_runtime(
    gw: ClusterGateway,
    deployment: Deployment,
    *,
    replicas: int,
    engine_args: list[str],
    image: str,
    description: str,
) -> Revision:
    """Render and apply the runtime release with these settings; returns the revision (the current one when
    nothing changed, so a re-run makes no second revision)."""
    values = charts.deployment_runtime_values(
        deployment, replicas=replicas, engine_args=engine_args, image=image
    )
    revision = install_or_upgrade(
        gw, deployment.cluster, chart=RUNTIME_CHART, release=runtime_release_name(deployment),
        namespace=deployment.namespace, values=values, description=description,
    )  # fmt: skip
    if deployment.release_id != revision.release_id:
        Deployment.objects.filter(pk=deployment.pk).update(release_id=revision.release_id)
    return revision


def mark_running(deployment: Deployment) -> None:
    """The deploy run's end: RUNNING, unless a delete came in meanwhile (checked under the row lock)."""
    with transaction.atomic():
        current = Deployment.objects.select_for_update().get(pk=deployment.pk)
        refuse_if_deleting(current)
        set_status(
            current, DeploymentStatus.RUNNING, "", kind="deploy", only_from={DeploymentStatus.DEPLOYING}
        )


def teardown(gw: ClusterGateway, deployment: Deployment) -> dict:
    """Uninstall every release in the deployment's namespace (newest first), then delete the namespace."""
    releases = list(
        Release.objects.filter(cluster=deployment.cluster, namespace=deployment.namespace)
        .exclude(status=ReleaseStatus.UNINSTALLED)
        .order_by("-created_at")
    )
    deleted = 0
    for release in releases:
        deleted += uninstall(gw, release)
    namespace_deleted = gw.delete("v1", "Namespace", deployment.namespace)
    Worker.objects.filter(deployment=deployment).delete()
    Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
    return {
        "releases": [r.name for r in releases],
        "objects_deleted": deleted,
        "namespace_deleted": namespace_deleted,
    }


def keep_for_inspection(deployment: Deployment) -> dict:
    """``keep_on_failure``: the failed deployment's namespace stays; only the credentials leave the row."""
    Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
    return {"kept": f"keep_on_failure: namespace {deployment.namespace} left for inspection"}


def _not_deleted(deployment_id: int) -> Deployment | None:
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None or deployment.status in (DeploymentStatus.DELETING, DeploymentStatus.DELETED):
        return None
    return deployment


def deploy_failed(deployment_id: int, *, error: str, cancelled: bool) -> dict:
    """The deploy run failed or was cancelled: FAILED with the run's reason (unless the deployment is being
    deleted, which says more)."""
    deployment = _not_deleted(deployment_id)
    if deployment is None:
        return {"skipped": "deployment deleted"}
    reason = error or "the deploy run did not finish"
    if cancelled and "cancel" not in reason:
        reason = f"cancelled: {reason}"
    if not set_status(
        deployment, DeploymentStatus.FAILED, reason, kind="deploy", only_from=NOT_BEING_DELETED
    ):
        return {"skipped": f"deployment is {deployment.status}"}
    return {"status": DeploymentStatus.FAILED}


# --- the update and rollback runs' rules ---------------------------------------------------------------------------


def begin_change(deployment: Deployment, title: str, *, kind: str) -> None:
    set_status(deployment, DeploymentStatus.DEPLOYING, title, kind=kind, only_from=NOT_BEING_DELETED)


def extra_replicas(deployment: Deployment, changes: dict) -> int:
    return int(changes.get("replicas", deployment.replicas)) - deployment.replicas


def check_room(gw: ClusterGateway, deployment: Deployment, extra: int) -> str:
    """Scaling up needs room for the extra replicas on the same kind of device (inventory read again)."""
    refresh_inventory(deployment.cluster, gw)
    try:
        result = place(
            deployment.config,
            node_capacities(deployment.cluster),
            replicas=extra,
            device_type=deployment.placement["candidate"]["device_type"],
        )
    except placement_engine.PlacementError as exc:
        raise DeploymentRefused(
            f"no room for {extra} more replica(s): {exc}", code=Code.NO_FIT, status=422
        ) from None
    return result.best.describe()


def apply_changes(gw: ClusterGateway, deployment: Deployment, changes: dict) -> Revision:
    """Roll out a new runtime revision with the requested replicas / engine args / image, then keep them."""
    replicas = int(changes.get("replicas", deployment.replicas))
    engine_args = list(changes.get("engine_args", deployment.engine_args))
    image = changes.get("image", deployment.image)
    what = ", ".join(f"{k}={v}" for k, v in changes.items())
    revision = install_runtime(
        gw, deployment, replicas=replicas, engine_args=engine_args, image=image,
        description=f"update: {what}"[:200],
    )  # fmt: skip
    Deployment.objects.filter(pk=deployment.pk).update(
        replicas=replicas, engine_args=engine_args, image=image
    )
    return revision


def roll_back(gw: ClusterGateway, deployment: Deployment, number: int, *, since: datetime) -> Revision:
    """Re-apply stored revision ``number`` as a new revision (helm-style) and restore the replicas, engine args
    and image it was made with. A re-run finds the revision it already created (made after ``since``, the run's
    start, and described as this rollback) instead of making a second one."""
    release = deployment.release
    if release is None:
        raise DeploymentRefused("the deployment has no runtime release", code=Code.NO_RUNTIME, status=409)
    target = Revision.objects.get(release=release, number=number)
    current = release.revisions.filter(number=release.current_revision).first()
    if current is not None and current.created_at >= since and current.description == f"rollback to {number}":
        revision = current  # this run already created it before its worker died
    else:
        revision = rollback(gw, release, number)
    Deployment.objects.filter(pk=deployment.pk).update(**charts.revision_settings(target.values))
    return revision


def finish_change(deployment: Deployment) -> None:
    set_status(
        deployment, DeploymentStatus.RUNNING, "", kind="update", ready_replicas=deployment.replicas,
        only_from={DeploymentStatus.DEPLOYING},
    )  # fmt: skip


def change_failed(deployment_id: int, *, title: str, error: str) -> dict:
    """An update or rollback failed: DEGRADED, since the previous revision may still serve; the health beat
    settles RUNNING / DEGRADED / FAILED later."""
    deployment = _not_deleted(deployment_id)
    if deployment is None:
        return {"skipped": "deployment deleted"}
    set_status(
        deployment, DeploymentStatus.DEGRADED, f"{title} failed: {error}", kind="update",
        only_from=NOT_BEING_DELETED,
    )  # fmt: skip
    return {"status": DeploymentStatus.DEGRADED}


# --- the delete run's rules ----------------------------------------------------------------------------------------


def mark_deleted(deployment: Deployment) -> None:
    Worker.objects.filter(deployment=deployment).delete()
    set_status(
        deployment, DeploymentStatus.DELETED, "", kind="delete", ready_replicas=0, endpoint_url="",
        only_from={DeploymentStatus.DELETING},
    )  # fmt: skip


def delete_failed(deployment_id: int, *, error: str) -> None:
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is not None:
        set_status(
            deployment, DeploymentStatus.FAILED, f"deletion failed: {error}", kind="delete",
            only_from={DeploymentStatus.DELETING},
        )  # fmt: skip


__all__ = [
    "DeploymentRefused",
    "PlanOutcome",
    "namespace_for",
    "plan",
    "plan_fleet",
    "revisions",
    "start_delete",
    "start_deploy",
    "start_fleet_deploy",
    "start_rollback",
    "start_update",
]
