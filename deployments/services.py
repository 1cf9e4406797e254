"""Deployment domain functions: plan, deploy, day-2 changes, delete, health. The only place the rules live.

The API, the admin, the management commands, the Celery tasks and the workflow steps all call these.

* **Plan** (`plan`) is a dry run: the stored inventory → `placement.plan_placement` → the chart values of the best
  candidate → both charts rendered with the Helm engine → memory breakdown and an estimated time per step. Nothing
  is written anywhere.
* **Deploy** (`start_deploy`) plans the same way first, so a model that fits nowhere is refused with per-node
  reasons before anything exists (no Deployment row, no run, no cluster object). Otherwise it stores the
  Deployment (credentials from the request encrypted on the row, never in run params) and launches the
  ``deployment.deploy`` workflow (``deployments/workflows.py``), which re-plans on a freshly read inventory.
* **Day 2**: `start_update` (replicas, engine args, image → a new revision of the runtime release, rolled out),
  `start_rollback` (a stored revision re-applied as a new one, helm-style), `start_delete` (every release
  uninstalled, the namespace deleted). Revisions are the ``clusters.Revision`` rows of ``Deployment.release``.
* **Health** (`check_health`, `sweep`): ready replicas, restarts and an endpoint answer → RUNNING / DEGRADED /
  FAILED, each transition recorded as a ``DeploymentEvent``; workers upserted in bulk.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from clusters.choices import ClusterStatus, ReleaseStatus
from clusters.models import Cluster, Revision
from core import helm
from core.gateway import ClusterGateway, GatewayError, system_ssl_context
from core.models import Run, recorded_user

from . import placement as placement_engine
from .catalog import GENERATION, resolve_model
from .choices import DeploymentStatus, ModelSource, WorkerPhase
from .models import NAMESPACE_MAX_NAME, Deployment, DeploymentEvent, Worker

logger = logging.getLogger(__name__)

RUNTIME_CHART = "bud_runtime_container"
TRANSFER_CHART = "model_transfer"
TRANSFER_RELEASE = "model"
TRANSFER_JOB = "model-transfer"
PVC_NAME = "model-weights"
HF_SECRET = "hf-token"  # noqa: S105 - a Secret object name, not a credential
S3_SECRET = "s3-credentials"  # noqa: S105 - a Secret object name
DEPLOYMENT_LABEL = "budcluster.io/deployment-id"
SERVING_PORT = 8000

# --- settings (environment variables with defaults; see README "Deployments") ------------------------------------


class DeploymentRefused(Exception):
    """The request is refused; ``status`` is the HTTP status, ``data`` extra fields for the answer."""

    def __init__(self, message: str, *, status: int = 400, data: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.data = data or {}

    def as_dict(self) -> dict:
        return {"detail": str(self), **self.data}


# --- names -----------------------------------------------------------------------------------------------------


def sanitise(name: str, limit: int) -> str:
    """A DNS-1123 label fragment: lower case, [a-z0-9-], no leading/trailing dash, at most ``limit``."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    text = re.sub(r"-{2,}", "-", text)[:limit].strip("-")
    return text or "model"


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


def runtime_release_name(deployment: Deployment) -> str:
    return sanitise(deployment.name, 40)


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

    def as_dict(self) -> dict:
        if not self.ok:
            return {"feasible": False, **self.refusal}
        estimate = self.placement["result"]["estimate"]
        return {
            "feasible": True,
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


def placement_record(result) -> dict:
    """What a deployment keeps of a placement: the chosen candidate, the estimate, the runtime values."""
    return {
        "candidate": result.best.as_dict(),
        "result": result.as_dict(max_refusals=50),
        "runtime": placement_engine.runtime_values(result),
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


# --- chart values ----------------------------------------------------------------------------------------------


def _image(image: str) -> dict:
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": image, "tag": "latest"}
    return {"repository": repository, "tag": tag}


def model_path(config: dict, runtime: dict) -> str:
    """Directory of the weights inside the volume (the transfer's destination), or the hub id without one."""
    return runtime["model"]


def runtime_chart_values(
    *,
    deployment_id: str,
    config: dict,
    runtime: dict,
    replicas: int,
    engine_args: Iterable[str],
    image: str,
    has_hf_secret: bool,
    ingress_host: str = "",
) -> dict:
    """Values of ``charts/bud_runtime_container`` from a placement's runtime values and the request."""
    device = runtime["device_type"]
    extra = [f"--dtype={runtime['dtype']}"]
    if runtime.get("quantization") == "fp8":
        extra.append("--quantization=fp8")
    if runtime.get("model_kind") and runtime["model_kind"] != GENERATION:
        extra.append("--task=embed")
    extra.extend(str(a) for a in engine_args)
    env = [{"name": k, "value": str(v)} for k, v in sorted((config.get("env") or {}).items())]
    if device == "cpu":
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(runtime["cpu_kvcache_space_gib"])})
    with_storage = config.get("source", ModelSource.HF) != ModelSource.NONE
    values: dict[str, Any] = {
        "deploymentId": deployment_id,
        "deviceType": device,
        "replicas": replicas,
        "model": {"servedName": runtime["served_model_name"], "path": model_path(config, runtime)},
        "modelStorage": {"enabled": with_storage, "existingClaim": PVC_NAME if with_storage else ""},
        "engine": {
            "port": SERVING_PORT,
            "tensorParallelSize": runtime["tensor_parallel_size"],
            "maxModelLen": runtime["max_model_len"],
            "gpuMemoryUtilization": runtime["gpu_memory_utilization"]
            or placement_engine.DEFAULT_GPU_MEMORY_UTILIZATION,
            "maxNumSeqs": runtime["max_num_seqs"],
            "extraArgs": extra,
        },
        "resources": {
            "requests": {"cpu": runtime["cpu_request"], "memory": runtime["memory_request"]},
            "limits": {"memory": runtime["memory_limit"]},
        },
        "nodeSelector": dict(runtime.get("node_selector") or {}),
        "shm": {"enabled": True, "sizeLimit": runtime["shm_size"]},
        "service": {
            "type": config.get("service_type") or settings.DEPLOY_SERVICE_TYPE,
            "port": SERVING_PORT,
        },
        "env": env,
    }
    if image:
        values["image"] = _image(image)
    if has_hf_secret:
        values["huggingface"] = {"existingSecret": HF_SECRET, "tokenKey": "token"}
    if ingress_host:
        values["ingress"] = {"enabled": True, "host": ingress_host, "path": "/", "pathType": "Prefix"}
    return values


def transfer_chart_values(config: dict, runtime: dict, weights_bytes: int, *, has_secret: bool) -> dict:
    """Values of ``charts/model_transfer``: a PVC sized for the weights and the copy Job."""
    size_gi = max(1, math.ceil(weights_bytes * 1.2 / placement_engine.GIB) + 1)
    values: dict[str, Any] = {
        "source": config.get("source") or ModelSource.HF,
        "jobName": TRANSFER_JOB,
        "pvc": {"create": True, "name": PVC_NAME, "size": f"{size_gi}Gi"},
        "destinationPath": runtime["model"],
        "modelSizeBytes": int(weights_bytes),
    }
    if config.get("pvc_storage_class"):
        values["pvc"]["storageClassName"] = config["pvc_storage_class"]
    if values["source"] == ModelSource.S3:
        s3 = config.get("s3") or {}
        values["s3"] = {
            "endpoint": s3.get("endpoint", ""),
            "region": s3.get("region") or "us-east-1",
            "bucket": s3.get("bucket", ""),
            "prefix": s3.get("prefix", ""),
            "existingSecret": S3_SECRET,
        }
    else:
        values["huggingface"] = {"repoId": runtime["model"], "revision": config.get("revision") or "main"}
        if has_secret:
            values["huggingface"].update(existingSecret=HF_SECRET, tokenKey="token")
    return values


def ingress_host(cluster: Cluster, namespace: str) -> str:
    """``<namespace>.<ingress host>`` when the cluster has an ingress URL (the original's endpoint naming)."""
    if not cluster.ingress_url:
        return ""
    host = urlsplit(cluster.ingress_url).hostname or ""
    return f"{namespace}.{host}" if host else ""


# --- plan (dry run) ----------------------------------------------------------------------------------------------


def node_capacities(cluster: Cluster) -> list:
    """The stored inventory (``hardware``'s Node rows) as placement input."""
    from hardware.models import Node

    rows = []
    for node in Node.objects.filter(cluster=cluster):
        rows.append(
            placement_engine.NodeCapacity(
                name=node.name,
                ready=node.ready,
                schedulable=node.schedulable,
                accelerator_type=node.accelerator_type,
                accelerator_vendor=node.accelerator_vendor or "",
                accelerator_model=node.accelerator_model or "",
                device_count=node.accelerator_count,
                free_devices=node.free_accelerators,
                device_memory_mib=node.accelerator_memory_mib or 0,
                cpu_cores=node.cpu_cores or 0,
                free_cpu_millicores=node.free_cpu_millicores,
                memory_bytes=node.memory_bytes or 0,
                free_memory_bytes=node.free_memory_bytes,
                cpu_flags=frozenset(node.cpu_flags or ()),
                taints=tuple(_taint_text(t) for t in node.taints or []),
            )
        )
    return rows


def _taint_text(taint: dict) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def _nodes(cluster: Cluster) -> list:
    return node_capacities(cluster)


def plan(cluster: Cluster, config: dict, *, nodes: list | None = None, name: str = "preview") -> PlanOutcome:
    """Dry run on the stored inventory: placement or per-node refusals, manifests, memory, ETA. Writes nothing.

    Raises ValueError for an invalid request (bad model, dtype, context, ...).
    """
    try:
        result = place(config, nodes if nodes is not None else _nodes(cluster))
    except placement_engine.PlacementError as exc:
        return PlanOutcome(ok=False, refusal=refusal_record(exc))
    record = placement_record(result)
    runtime = record["runtime"]
    if config.get("served_model_name"):
        runtime["served_model_name"] = config["served_model_name"]
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
        ingress_host=ingress_host(cluster, namespace),
    )
    manifests = {}
    try:
        manifests["runtime"], _ = helm.render(
            RUNTIME_CHART, values, release=sanitise(name, 40), namespace=namespace
        )
        if config.get("source", ModelSource.HF) != ModelSource.NONE:
            manifests["transfer"], _ = helm.render(
                TRANSFER_CHART,
                transfer_chart_values(config, runtime, result.estimate.weights_bytes, has_secret=has_hf),
                release=TRANSFER_RELEASE,
                namespace=namespace,
            )
    except helm.ChartError as exc:
        raise ValueError(str(exc)) from None
    return PlanOutcome(
        ok=True,
        placement=record,
        runtime_values=values,
        manifests=manifests,
        eta=eta_seconds(config, result.estimate.weights_bytes, result.best.device_type),
    )


# --- deploy ------------------------------------------------------------------------------------------------------

CREDENTIAL_KEYS = ("hf_token", "s3_access_key_id", "s3_secret_access_key")


def _usable_cluster(cluster: Cluster) -> None:
    if cluster.status != ClusterStatus.AVAILABLE:
        raise DeploymentRefused(
            f"cluster {cluster.name} is {cluster.status}, not available"
            + (f": {cluster.reason}" if cluster.reason else ""),
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

    A model that fits nowhere raises DeploymentRefused (422) with the per-node refusals; nothing is created.
    ``config`` must not hold credentials: they go in ``credentials`` and are stored encrypted on the row.
    """
    from .workflows import DEPLOY

    _usable_cluster(cluster)
    creds = {k: v for k, v in (credentials or {}).items() if k in CREDENTIAL_KEYS and v}
    if config.get("source") == ModelSource.S3 and not (
        creds.get("s3_access_key_id") and creds.get("s3_secret_access_key")
    ):
        raise DeploymentRefused("source s3 needs s3.access_key_id and s3.secret_access_key")
    try:
        outcome = plan(cluster, {**config, "_has_credentials": {k: True for k in creds}}, name=name)
    except ValueError as exc:
        raise DeploymentRefused(str(exc)) from None
    if not outcome.ok:
        raise DeploymentRefused(outcome.refusal["detail"], status=422, data=outcome.refusal)
    spec = resolve_model(config["model"])
    secret_names = sorted({HF_SECRET if key == "hf_token" else S3_SECRET for key in creds})
    weights = outcome.placement["result"]["estimate"]["weights_bytes"]
    device = outcome.placement["candidate"]["device_type"]
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
        run = DEPLOY.launch(subject=deployment, params=params, user=user, title=f"Deploy {name}")
    return deployment, run


# --- day 2 -------------------------------------------------------------------------------------------------------


def _changeable(deployment: Deployment) -> None:
    if deployment.status not in (
        DeploymentStatus.RUNNING,
        DeploymentStatus.DEGRADED,
        DeploymentStatus.FAILED,
    ):
        raise DeploymentRefused(
            f"deployment {deployment.name} is {deployment.status}; wait until it is running", status=409
        )
    if deployment.release_id is None or deployment.release.status != ReleaseStatus.DEPLOYED:
        raise DeploymentRefused(f"deployment {deployment.name} has no installed runtime", status=409)
    if active_run(deployment) is not None:
        raise DeploymentRefused(f"deployment {deployment.name} has a run in progress", status=409)


def active_run(deployment: Deployment) -> Run | None:
    from core.choices import RunStatus

    return (
        Run.objects.filter(subject_id=str(deployment.pk), kind__startswith="deployment.")
        .filter(status__in=RunStatus.active())
        .first()
    )


def start_update(
    deployment: Deployment,
    *,
    replicas: int | None = None,
    engine_args: list[str] | None = None,
    image: str | None = None,
    user: Any = None,
) -> Run:
    """Scale and/or change engine args or image: a new revision of the runtime release, rolled out."""
    from .workflows import UPDATE

    _changeable(deployment)
    changes: dict[str, Any] = {}
    if replicas is not None and replicas != deployment.replicas:
        changes["replicas"] = replicas
    if engine_args is not None and list(engine_args) != list(deployment.engine_args):
        changes["engine_args"] = list(engine_args)
    if image is not None and image != deployment.image:
        changes["image"] = image
    if not changes:
        raise DeploymentRefused("nothing to change: replicas, engine_args and image are as they are")
    what = ", ".join(f"{k}={v}" for k, v in changes.items())
    with transaction.atomic():
        record_event(deployment, "update", f"update requested: {what}")
        return UPDATE.launch(
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
    from .workflows import ROLLBACK

    _changeable(deployment)
    if not Revision.objects.filter(release_id=deployment.release_id, number=revision).exists():
        raise DeploymentRefused(f"deployment {deployment.name} has no revision {revision}", status=404)
    with transaction.atomic():
        record_event(deployment, "rollback", f"rollback to revision {revision} requested")
        return ROLLBACK.launch(
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
    weights = (deployment.placement.get("result") or {}).get("estimate", {}).get("weights_bytes", 0)
    return timeouts(deployment.config, weights)


def start_delete(deployment: Deployment, *, user: Any = None) -> Run:
    """Remove every object of the deployment and its namespace; the row stays as DELETED (history)."""
    from .workflows import DELETE

    if deployment.status in (DeploymentStatus.DELETING, DeploymentStatus.DELETED):
        raise DeploymentRefused(f"deployment {deployment.name} is already {deployment.status}", status=409)
    from core import workflow

    running = active_run(deployment)
    if running is not None:
        # Deleting wins over a deploy in progress: stop it (its cleanup may run too; both are idempotent).
        workflow.request_cancel(running, reason="deployment deleted")
    with transaction.atomic():
        set_status(deployment, DeploymentStatus.DELETING, "deletion requested", kind="delete")
        return DELETE.launch(
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
    DeploymentEvent.objects.create(
        deployment=deployment, kind=kind, message=message[:4000], old_status=old, new_status=new
    )


def set_status(
    deployment: Deployment, status: str, reason: str = "", *, kind: str = "status", **fields
) -> bool:
    """Set status (and fields) with an event when the status changes. Returns True if the status changed."""
    old = Deployment.objects.filter(pk=deployment.pk).values_list("status", flat=True).first()
    Deployment.objects.filter(pk=deployment.pk).update(
        status=status, reason=reason, updated_at=timezone.now(), **fields
    )
    deployment.status, deployment.reason = status, reason
    for key, value in fields.items():
        setattr(deployment, key, value)
    if old != status:
        record_event(deployment, kind, reason or f"{old} → {status}", old=old or "", new=status)
        return True
    return False


# --- reading the cluster: pods, workers, readiness ----------------------------------------------------------------


def _ts(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def pod_summary(pod: dict) -> dict:
    """What an operator wants to know of one runtime pod (a Worker row's fields)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    statuses = status.get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    ready = bool(statuses) and all(c.get("ready") for c in statuses)
    reasons = []
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
            reasons.append(f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
        terminated = (c.get("lastState") or {}).get("terminated") or {}
        if terminated.get("reason") and waiting.get("reason") == "CrashLoopBackOff":
            reasons.append(f"last exit: {terminated['reason']} ({terminated.get('exitCode')})")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reasons.append(f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}")
    device = ""
    for container in spec.get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        for key in (*placement_engine.ACCELERATOR_RESOURCE.values(),):
            if key in limits:
                device = f"{limits[key]}x {key}"
    phase = status.get("phase") or WorkerPhase.UNKNOWN
    if meta.get("deletionTimestamp"):
        phase = WorkerPhase.DELETING
    return {
        "name": meta.get("name", ""),
        "node": spec.get("nodeName") or "",
        "device": device or "cpu",
        "phase": phase,
        "ready": ready,
        "restarts": restarts,
        "reason": "; ".join(reasons)[:500],
        "started_at": _ts(status.get("startTime")),
    }


def list_pods(gw: ClusterGateway, deployment: Deployment) -> list[dict]:
    return gw.list("v1", "Pod", deployment.namespace, label_selector=f"{DEPLOYMENT_LABEL}={deployment.pk}")


def upsert_workers(deployment: Deployment, pods: list[dict]) -> list[dict]:
    """Bulk upsert one Worker per pod and drop the rows of pods that are gone (two or three queries)."""
    now = timezone.now()
    summaries = [pod_summary(p) for p in pods]
    rows = [Worker(deployment=deployment, updated_at=now, **s) for s in summaries if s["name"]]
    with transaction.atomic():
        if rows:
            Worker.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["deployment", "name"],
                update_fields=[
                    "node",
                    "device",
                    "phase",
                    "ready",
                    "restarts",
                    "reason",
                    "started_at",
                    "updated_at",
                ],
            )
        Worker.objects.filter(deployment=deployment).exclude(name__in=[r.name for r in rows]).delete()
    return summaries


def scheduling_events(gw: ClusterGateway, namespace: str) -> list[str]:
    """FailedScheduling (and other Warning) event messages of the namespace, newest last, verbatim."""
    try:
        events = gw.list("v1", "Event", namespace, field_selector="type=Warning")
    except GatewayError:
        return []
    out = []
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        if event.get("reason") in ("FailedScheduling", "FailedMount", "FailedCreate", "BackOff", "Failed"):
            text = f"{event.get('reason')}: {event.get('message', '')}"
            if text not in out:
                out.append(text)
    return out[-5:]


@dataclass
class Readiness:
    desired: int
    ready: int
    updated: int
    workers: list[dict]
    problems: list[str]

    @property
    def done(self) -> bool:
        live = [w for w in self.workers if w["phase"] != WorkerPhase.DELETING]
        return self.ready >= self.desired and self.updated >= self.desired and len(live) == self.desired

    def message(self) -> str:
        text = f"{self.ready}/{self.desired} replicas ready"
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text


def readiness(gw: ClusterGateway, deployment: Deployment) -> Readiness:
    """Ready replicas of the runtime Deployment, and why the others are not (reasons verbatim)."""
    name = runtime_release_name(deployment)
    obj = gw.get_or_none("apps/v1", "Deployment", name, deployment.namespace) or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    desired = int(spec.get("replicas", deployment.replicas))
    observed_current = status.get("observedGeneration", 0) >= obj.get("metadata", {}).get("generation", 0)
    pods = list_pods(gw, deployment)
    workers = upsert_workers(deployment, pods)
    problems = sorted({w["reason"] for w in workers if w["reason"]})
    # Pods the controllers could not even create (admission refused them: Pod Security, quota, ...): the
    # Deployment says so in its ReplicaFailure condition, with the API server's words.
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            problems.append(f"{cond.get('reason', 'FailedCreate')}: {cond.get('message', '')}")
    live = [w for w in workers if w["phase"] != WorkerPhase.DELETING]
    if (
        any("Unschedulable" in p or "FailedScheduling" in p for p in problems)
        or any(w["phase"] == WorkerPhase.PENDING and not w["node"] for w in workers)
        or len(live) < desired
    ):
        problems += [e for e in scheduling_events(gw, deployment.namespace) if e not in problems]
    return Readiness(
        desired=desired,
        ready=int(status.get("readyReplicas", 0)) if observed_current else 0,
        updated=int(status.get("updatedReplicas", 0)) if observed_current else 0,
        workers=workers,
        problems=problems,
    )


# --- endpoint ----------------------------------------------------------------------------------------------------


def endpoint_url(gw: ClusterGateway, deployment: Deployment) -> str:
    """The Service's LoadBalancer address, else the cluster ingress URL for the namespace; "" when neither."""
    name = runtime_release_name(deployment)
    service = gw.get_or_none("v1", "Service", name, deployment.namespace) or {}
    port = SERVING_PORT
    for p in (service.get("spec") or {}).get("ports") or []:
        port = int(p.get("port", port))
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        host = ingress.get("ip") or ingress.get("hostname")
        if host:
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{port}"
    host = ingress_host(deployment.cluster, deployment.namespace)
    if host:
        scheme = urlsplit(deployment.cluster.ingress_url).scheme or "http"
        return f"{scheme}://{host}"
    return ""


def _endpoint_client(url: str, timeout: float) -> httpx.Client:
    """An HTTP client for an address the cluster reported: checked with the kubeconfig guard's rules first
    (a hostile cluster must not point the service at link-local / metadata addresses)."""
    from core.netguard import AddressRefused, check_host_at_connect

    parts = urlsplit(url)
    try:
        check_host_at_connect(parts.hostname or "", parts.port or 80, timeout=timeout)
    except AddressRefused as exc:
        raise GatewayError(f"endpoint {url} refused: {exc}") from None
    return httpx.Client(
        base_url=url, timeout=timeout, trust_env=False, follow_redirects=False, verify=system_ssl_context()
    )


def probe_endpoint(url: str, served_name: str, model_kind: str, *, timeout: float = 10.0) -> dict:
    """``/v1/models`` lists the model and a completion (or embedding) answers 2xx. Raises GatewayError if not."""
    started = time.monotonic()
    try:
        with _endpoint_client(url, timeout) as client:
            models = client.get("/v1/models")
            if models.status_code != 200:
                raise GatewayError(f"GET {url}/v1/models answered {models.status_code}")
            listed = [m.get("id") for m in (models.json().get("data") or [])]
            if served_name not in listed:
                raise GatewayError(f"GET {url}/v1/models does not list {served_name!r} (lists {listed})")
            if model_kind == GENERATION:
                path, body = "/v1/completions", {"model": served_name, "prompt": "Hello", "max_tokens": 4}
            else:
                path, body = "/v1/embeddings", {"model": served_name, "input": "Hello"}
            answer = client.post(path, json=body)
            if not 200 <= answer.status_code < 300:
                raise GatewayError(f"POST {url}{path} answered {answer.status_code}: {answer.text[:200]}")
    except httpx.HTTPError as exc:
        raise GatewayError(f"{url} did not answer: {type(exc).__name__}: {exc}") from None
    except ValueError:
        raise GatewayError(f"{url}/v1/models did not answer JSON") from None
    return {
        "url": url,
        "models": listed,
        "checked": path,
        "ms": round((time.monotonic() - started) * 1000, 1),
    }


# --- health ------------------------------------------------------------------------------------------------------


def _gateway(cluster: Cluster, timeout: float = 10.0, *, reuse: bool = True) -> ClusterGateway:
    """Workflow steps reuse the process's connection; the threaded health sweep and web views pass False."""
    from clusters.services import gateway_for

    return gateway_for(cluster, timeout=timeout, reuse=reuse)


def health_verdict(desired: int, ready: int, endpoint_ok: bool) -> tuple[str, str]:
    """(status, reason) from ready replicas and the endpoint answer."""
    if desired and ready >= desired and endpoint_ok:
        return DeploymentStatus.RUNNING, ""
    if ready == 0 and not endpoint_ok:
        return DeploymentStatus.FAILED, f"no replica ready (0/{desired}) and the endpoint does not answer"
    if not endpoint_ok:
        return DeploymentStatus.DEGRADED, f"{ready}/{desired} replicas ready but the endpoint does not answer"
    return DeploymentStatus.DEGRADED, f"{ready}/{desired} replicas ready"


def check_health(deployment: Deployment, *, timeout: float | None = None) -> dict:
    """Read replicas and pods, probe the endpoint, upsert workers, apply the status transition (with an event)."""
    timeout = timeout or float(settings.DEPLOYMENT_HEALTH_TIMEOUT)
    result: dict[str, Any] = {"deployment": deployment.pk, "old": deployment.status}
    try:
        with _gateway(deployment.cluster, timeout=timeout, reuse=False) as gw:
            state = readiness(gw, deployment)
            url = deployment.endpoint_url or endpoint_url(gw, deployment)
    except GatewayError as exc:
        # The cluster is out of reach: that is the cluster sweep's business; keep the status, note the reason.
        Deployment.objects.filter(pk=deployment.pk).update(last_checked=timezone.now())
        return {**result, "new": deployment.status, "error": str(exc)}
    endpoint_ok, endpoint_error = False, ""
    if url and state.ready:
        try:
            probe_endpoint(
                url,
                deployment.served_model_name,
                deployment.model_spec.get("kind", GENERATION),
                timeout=timeout,
            )
            endpoint_ok = True
        except GatewayError as exc:
            endpoint_error = str(exc)
    status, reason = health_verdict(state.desired, state.ready, endpoint_ok)
    restarts = sum(w["restarts"] for w in state.workers)
    if status != DeploymentStatus.RUNNING:
        details = [p for p in (endpoint_error, *state.problems) if p]
        if details:
            reason = f"{reason}: {'; '.join(details)}"[:2000]
    with transaction.atomic():
        current = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if current.status not in DeploymentStatus.checked_by_health():
            return {**result, "new": current.status, "skipped": "status changed meanwhile"}
        set_status(
            current, status, reason, kind="health", ready_replicas=state.ready, last_checked=timezone.now(),
            endpoint_url=url or current.endpoint_url,
        )  # fmt: skip
    return {**result, "new": status, "ready": state.ready, "desired": state.desired, "restarts": restarts,
            "endpoint_ok": endpoint_ok, "reason": reason}  # fmt: skip


def sweep(*, deployment_ids: list[int] | None = None) -> dict:
    """Check every deployment that should be serving (RUNNING, DEGRADED, or FAILED with its runtime still
    installed), in parallel; the deployment health beat (every 3 minutes by default)."""
    started = time.monotonic()
    qs = Deployment.objects.filter(status__in=DeploymentStatus.checked_by_health()).select_related(
        "cluster", "release"
    )
    qs = qs.exclude(status=DeploymentStatus.FAILED, release__isnull=True).exclude(
        status=DeploymentStatus.FAILED, release__status=ReleaseStatus.UNINSTALLED
    )
    if deployment_ids is not None:
        qs = qs.filter(pk__in=deployment_ids)
    deployments = [d for d in qs if d.cluster.status == ClusterStatus.AVAILABLE]
    results = []
    workers = max(1, min(int(settings.DEPLOYMENT_HEALTH_CONCURRENCY), len(deployments) or 1))

    def one(d: Deployment) -> dict:
        from django.db import connection

        try:
            return check_health(d)
        except Exception as exc:  # one broken deployment must not stop the others
            logger.exception("health check of deployment %s crashed", d.pk)
            return {"deployment": d.pk, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, deployments))
    transitions = [
        (r["deployment"], r["old"], r["new"]) for r in results if r.get("old") != r.get("new") and "new" in r
    ]
    return {
        "checked": len(results),
        "transitions": transitions,
        "seconds": round(time.monotonic() - started, 3),
    }


# --- logs --------------------------------------------------------------------------------------------------------


def worker_logs(worker: Worker, *, tail_lines: int = 200) -> str:
    deployment = worker.deployment
    with _gateway(deployment.cluster, reuse=False) as gw:
        return gw.pod_logs(deployment.namespace, worker.name, tail_lines=tail_lines)


__all__ = [
    "DeploymentRefused",
    "PlanOutcome",
    "check_health",
    "namespace_for",
    "plan",
    "revisions",
    "start_delete",
    "start_deploy",
    "start_rollback",
    "start_update",
    "sweep",
    "worker_logs",
]
