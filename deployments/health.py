"""Reading a deployment's state off its cluster: pods and workers, rollout readiness, the weights transfer's
progress, the endpoint and its probe, the periodic health check and sweep, and worker logs.

* **Workers**: one ``Worker`` row per runtime pod, upserted in bulk whenever the pods are read (`upsert_workers`),
  with the reason a pod is not ready in Kubernetes' own words (waiting reasons, last exit, scheduling events).
  When pods land on or leave nodes, those nodes' inventory rows are read again (``hardware.services.refresh_nodes``)
  so free GPU counts show the deployment at once, not at the next inventory refresh.
* **Readiness** (`readiness`): ready and updated replicas of the runtime Deployment as of its current generation,
  and why the others are not ready; the deploy and day-2 runs wait on it.
* **Transfer** (`transfer_state`): the copy Job's conditions and the ``<job>-progress`` ConfigMap it writes.
* **Endpoint**: the Service's LoadBalancer address or the cluster's ingress host (`endpoint_url`), probed with
  ``/v1/models`` and one completion or embedding (`probe_endpoint`) through the outbound address guard, pinned to
  the address it checked.
* **Health** (`check_health`, `sweep`): ready replicas, restarts and the endpoint's answer → RUNNING / DEGRADED /
  FAILED, each transition recorded as a ``DeploymentEvent`` (``services.set_status``). The sweep checks every
  deployment that should be serving in parallel (``core.sweep.sweep_each``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from clusters.choices import ClusterStatus, ReleaseStatus
from clusters.services import gateway_for
from core import events as core_events
from core.gateway import ClusterGateway, GatewayError, pinned_client
from core.sweep import sweep_each
from hardware.services import refresh_nodes

from .catalog import GENERATION
from .charts import DEPLOYMENT_LABEL, SERVING_PORT, ingress_host, runtime_release_name
from .choices import DeploymentStatus, WorkerPhase
from .models import Deployment, Worker
from .placement import ACCELERATOR_RESOURCE, GIB
from .services import set_status

logger = logging.getLogger(__name__)


# --- pods and workers --------------------------------------------------------------------------------------------


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
        for key in ACCELERATOR_RESOURCE.values():
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
        before = {
            w["name"]: w
            for w in Worker.objects.filter(deployment=deployment).values(
                "name", "node", "phase", "ready", "restarts"
            )
        }
        _emit_worker_changes(deployment, before, rows)
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


def _emit_worker_changes(deployment: Deployment, before: dict[str, dict], rows: list[Worker]) -> None:
    """One outbox event per worker (pod) that appeared, left, or changed phase, readiness or restart count."""
    changes = []
    for row in rows:
        old = before.get(row.name)
        if old is not None and (old["phase"], old["ready"], old["restarts"]) == (
            row.phase,
            row.ready,
            row.restarts,
        ):
            continue
        changes.append(
            {
                "worker": row.name,
                "node": row.node,
                "old_phase": old["phase"] if old else "",
                "phase": row.phase,
                "ready": row.ready,
                "restarts": row.restarts,
                "reason": row.reason,
            }
        )
    seen = {r.name for r in rows}
    changes += [
        {"worker": name, "node": old["node"], "old_phase": old["phase"], "phase": "gone", "ready": False}
        for name, old in before.items()
        if name not in seen
    ]
    core_events.emit_many(
        ("deployment.worker.changed", f"deployments/{deployment.pk}", {"deployment": deployment.pk, **c})
        for c in changes
    )


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


# Phases in which a pod no longer holds what it requested (hardware.pods counts the same way).
_RELEASED_PHASES = frozenset({WorkerPhase.SUCCEEDED, WorkerPhase.FAILED})


def _held_nodes(workers) -> dict[str, str]:
    """Pod name → the node it holds resources on (bound and not terminated)."""
    return {w["name"]: w["node"] for w in workers if w["node"] and w["phase"] not in _RELEASED_PHASES}


def _refresh_changed_nodes(gw: ClusterGateway, deployment: Deployment, before: dict, after: dict) -> None:
    """Read again the nodes the deployment's pods were bound to or released, so their free counts are current."""
    moved = [pod for pod in before.keys() | after.keys() if before.get(pod) != after.get(pod)]
    changed = {before.get(pod) for pod in moved} | {after.get(pod) for pod in moved}
    changed.discard(None)
    if not changed:
        return
    try:
        refresh_nodes(deployment.cluster, gw, changed)
    except GatewayError as exc:
        # The next read of the pods, or the periodic refresh, tries again; readiness itself does not depend on it.
        logger.info(
            "could not refresh nodes %s of cluster %s: %s", sorted(changed), deployment.cluster_id, exc
        )


# --- readiness ---------------------------------------------------------------------------------------------------


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

    @property
    def progress(self) -> float:
        return self.ready / self.desired if self.desired else 0.0

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
    held_before = _held_nodes(Worker.objects.filter(deployment=deployment).values("name", "node", "phase"))
    workers = upsert_workers(deployment, pods)
    _refresh_changed_nodes(gw, deployment, held_before, _held_nodes(workers))
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


def observe_rollout(gw: ClusterGateway, deployment: Deployment) -> Readiness:
    """`readiness`, with the ready replica count recorded on the deployment (what a waiting run shows)."""
    state = readiness(gw, deployment)
    Deployment.objects.filter(pk=deployment.pk).update(ready_replicas=state.ready)
    return state


# --- the weights transfer ------------------------------------------------------------------------------------------


def _gib(num: int) -> str:
    return f"{num / GIB:.1f}"


@dataclass
class TransferState:
    """The copy Job as last read: bytes copied (from its progress ConfigMap) and how it ended, if it has."""

    job: str
    done: int
    total: int
    complete: bool = False
    failed: bool = False
    reason: str = ""  # "<reason>: <message>" of the Job's Failed condition

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 0.0

    def message(self) -> str:
        copied = f"{_gib(self.done)} of {_gib(self.total)} GiB copied"
        if self.failed:
            return f"the weights transfer failed: {self.reason} ({copied}; see the logs of Job {self.job})"
        return copied


def transfer_state(gw: ClusterGateway, namespace: str, job: str, *, bytes_total: int = 0) -> TransferState:
    """Read the copy Job and its ``<job>-progress`` ConfigMap (phase, bytes_done, bytes_total; ``bytes_total``
    stands in until the Job has written its own)."""
    obj = gw.get_or_none("batch/v1", "Job", job, namespace) or {}
    progress = gw.get_or_none("v1", "ConfigMap", f"{job}-progress", namespace) or {}
    data = progress.get("data") or {}
    done = int(data.get("bytes_done") or 0)
    total = int(data.get("bytes_total") or bytes_total or 0)
    conditions = {
        c.get("type"): c
        for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    state = TransferState(job=job, done=done, total=total)
    if "Failed" in conditions or data.get("phase") == "Failed":
        cond = conditions.get("Failed") or {}
        state.failed = True
        state.reason = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"
    elif "Complete" in conditions or data.get("phase") == "Succeeded":
        state.complete = True
    return state


# --- the namespace -------------------------------------------------------------------------------------------------


def namespace_left(gw: ClusterGateway, namespace: str) -> str:
    """ "" once the namespace is gone, else its phase ("Terminating") or "still there"."""
    obj = gw.get_or_none("v1", "Namespace", namespace)
    if obj is None:
        return ""
    return (obj.get("status") or {}).get("phase", "") or "still there"


# --- endpoint ----------------------------------------------------------------------------------------------------


class NotServing(Exception):
    """The endpoint has no address yet or does not answer as a model server should; the message says which."""


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
    """An HTTP client for an address the cluster reported, checked with the kubeconfig guard's rules (a hostile
    cluster must not point the service at link-local / metadata addresses) and pinned to the IP that was checked:
    the name is never looked up again, so a DNS answer cannot change between the check and the connection. Each
    request ends within ``timeout`` (body included) and answers are size-capped (``core.gateway.pinned_client``).
    """
    from core.netguard import AddressRefused

    try:
        return pinned_client(url, timeout=timeout)
    except (AddressRefused, ValueError) as exc:
        raise GatewayError(f"endpoint {url} refused: {exc}") from None


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


def confirm_endpoint(deployment: Deployment, url: str) -> dict:
    """Probe the endpoint the deploy run found and record its URL on the deployment; NotServing until it
    answers."""
    if not url:
        raise NotServing("the Service has no LoadBalancer address yet and the cluster has no ingress URL")
    try:
        answer = probe_endpoint(
            url,
            deployment.placement["runtime"]["served_model_name"],
            deployment.model_spec.get("kind", GENERATION),
        )
    except GatewayError as exc:
        raise NotServing(str(exc)) from None
    Deployment.objects.filter(pk=deployment.pk).update(endpoint_url=url)
    return answer


# --- health ------------------------------------------------------------------------------------------------------


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
        # A connection of its own (reuse=False): the sweep runs many of these on threads at once.
        with gateway_for(deployment.cluster, timeout=timeout, reuse=False) as gw:
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
        # Compare-and-set against what the probe started from: a delete, an update or a failed run written
        # while the cluster was being read wins over this (older) verdict, even when it ended in the same status.
        current = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if (current.status, current.updated_at) != (deployment.status, deployment.updated_at):
            return {**result, "new": current.status, "skipped": "status changed meanwhile"}
        set_status(
            current, status, reason, kind="health", ready_replicas=state.ready, last_checked=timezone.now(),
            endpoint_url=url or current.endpoint_url, only_from={current.status},
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
    outcomes = sweep_each(
        deployments,
        check_health,
        workers=int(settings.DEPLOYMENT_HEALTH_CONCURRENCY),
        name="deployment-health",
    )
    for deployment, outcome in outcomes:
        if isinstance(outcome, BaseException):  # one broken deployment must not stop the others
            logger.error("health check of deployment %s crashed", deployment.pk, exc_info=outcome)
            outcome = {"deployment": deployment.pk, "error": f"{type(outcome).__name__}: {outcome}"}
        results.append(outcome)
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
    """The pod's log, read live (a connection of its own: web requests do not share the workers' one)."""
    deployment = worker.deployment
    with gateway_for(deployment.cluster, reuse=False) as gw:
        return gw.pod_logs(deployment.namespace, worker.name, tail_lines=tail_lines)


__all__ = [
    "NotServing",
    "Readiness",
    "TransferState",
    "check_health",
    "confirm_endpoint",
    "endpoint_url",
    "namespace_left",
    "observe_rollout",
    "probe_endpoint",
    "readiness",
    "sweep",
    "transfer_state",
    "worker_logs",
]
