"""Autoscaling per deployment: a policy, the runtime's own Prometheus metrics, HPA-style decisions, the update run.

Policy (``Deployment.autoscaling``, empty = replicas set by hand)
    ``min_replicas`` ≤ ``max_replicas`` and one target, per replica:

    =================  =====================================================  ====================================
    ``metric``         read from each ready replica's ``/metrics``            ``target``
    =================  =====================================================  ====================================
    waiting_requests   ``vllm:num_requests_waiting`` (requests queued for a   waiting requests per replica (> 0)
                       slot), summed over the replicas
    ttft_p95           ``vllm:time_to_first_token_seconds`` histogram: the    milliseconds (> 0)
                       p95 of the requests since the previous evaluation
                       (bucket deltas summed over the replicas, interpolated
                       as Prometheus' ``histogram_quantile``)
    kv_cache_usage     ``vllm:kv_cache_usage_perc`` (vLLM ≥ 0.10; else        fraction of the KV cache, 0 < t ≤ 1
                       ``vllm:gpu_cache_usage_perc``), averaged
    =================  =====================================================  ====================================

    Metrics are read through the API server's pod proxy (``pods/<pod>:8000/proxy/metrics``, the ``pods/proxy``
    right): BudCluster runs outside the cluster, needs no Prometheus there, and sees every replica, not whichever
    one a Service picks.

Decision (Kubernetes' HorizontalPodAutoscaler algorithm; evaluated by the beat task ``deployments.autoscale``,
every 15 s by default, the HPA's sync period)
    1. ``ratio = value / target``; within ``tolerance`` (default 10 %) of 1 the recommendation is the current
       count, else ``ceil(replicas measured * ratio)``, clamped to [min, max]. No traffic reads as 0 (a
       latency with no request is no load), so an idle deployment goes down to ``min_replicas``.
    2. Stabilisation windows: every recommendation is kept with its time; a scale-up goes to the *lowest*
       recommendation of the last ``scale_up_stabilization_seconds`` (default 0: at once), a scale-down to the
       *highest* of the last ``scale_down_stabilization_seconds`` (default 300). Load that comes and goes within
       the window therefore never takes replicas away (flapping load does not flap replicas).
    3. Cooldowns, counted from the end of the previous scale (its update run): no scale-up for
       ``scale_up_cooldown_seconds`` (default 60) and no scale-down for ``scale_down_cooldown_seconds``
       (default 300), so the new replicas' own effect is measured before the next step.
    4. A scale-up is checked against placement first (inventory read again, the same device type): when fewer
       extra replicas fit than wanted, the scale stops at what fits and says why (placement's reason); when none
       fits, nothing is started and the condition says so.
    5. The scale goes through ``services.start_update`` — the same ``deployment.update`` run as a manual scale
       (its own capacity check, a new revision, wait until ready). While any run of the deployment is in
       progress, nothing is decided.

Records
    Every scale decision is a ``DeploymentEvent`` (kind ``autoscaling``) whose ``data`` holds the metric value,
    target, per-replica values, the raw and stabilised recommendations and the placement verdict. The state
    (``Deployment.autoscaling_state``) carries a KServe-style ``ScalingReady`` condition — True (ScalingActive,
    ScalingLimited, RunInProgress), False (MetricsUnavailable, NoCapacity, NotServing) or Unknown
    (AwaitingMetrics) — whose every change is an event too, and the last evaluation with its figures; holds
    (within tolerance, stabilising, cooling down) show there rather than as one event per evaluation.

Concurrency: an evaluation reads the policy and state, measures without holding a lock, then writes under the
row lock only if policy and state are still what it read (compare-and-set); a policy changed meanwhile, or a
second evaluation that got there first, makes it drop its result.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from clusters.choices import ClusterStatus
from clusters.services import gateway_for
from core import events as core_events
from core.choices import RunStatus
from core.gateway import ClusterGateway, GatewayError
from core.models import Run
from core.sweep import sweep_each
from hardware.services import refresh_inventory

from . import placement as placement_engine
from . import services
from .charts import DEPLOYMENT_LABEL, SERVING_PORT
from .choices import DeploymentStatus
from .models import Deployment, DeploymentEvent

logger = logging.getLogger(__name__)

EVENT_KIND = "autoscaling"
CONDITION = "ScalingReady"
MAX_REPLICAS = 256  # the update API's own limit


class Metric(models.TextChoices):
    WAITING_REQUESTS = "waiting_requests", "Waiting requests per replica"
    TTFT_P95 = "ttft_p95", "Time to first token, p95 (ms)"
    KV_CACHE_USAGE = "kv_cache_usage", "KV-cache usage (fraction 0-1)"


# The Prometheus series each metric reads (first name present wins).
SERIES = {
    Metric.WAITING_REQUESTS: ("vllm:num_requests_waiting",),
    Metric.TTFT_P95: ("vllm:time_to_first_token_seconds",),
    Metric.KV_CACHE_USAGE: ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
UNITS = {Metric.WAITING_REQUESTS: "waiting per replica", Metric.TTFT_P95: "ms", Metric.KV_CACHE_USAGE: ""}


@dataclass(frozen=True)
class Policy:
    """A deployment's autoscaling policy (validated by the API's ``AutoscalingPolicySerializer``)."""

    min_replicas: int
    max_replicas: int
    metric: str
    target: float
    tolerance: float = 0.1
    scale_up_stabilization_seconds: float = 0.0
    scale_down_stabilization_seconds: float = 300.0
    scale_up_cooldown_seconds: float = 60.0
    scale_down_cooldown_seconds: float = 300.0

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.min_replicas}-{self.max_replicas} replicas, {self.metric} target {self.target:g}"
            f"{' ' + UNITS[self.metric] if UNITS[self.metric] else ''}"
        )


# --- Prometheus text ------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str, names: set[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of the series ``names`` (with ``_bucket``/``_count``/``_sum`` for histograms) in Prometheus'
    text exposition: name → [(labels, value)]. Other series and unparsable lines are skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in names:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        out.setdefault(match.group(1), []).append((labels, value))
    return out


def histogram(samples: dict, name: str) -> dict[str, float] | None:
    """Cumulative bucket counts of histogram ``name`` summed over its label sets: {le: count} (``+Inf`` included)."""
    buckets: dict[str, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = labels.get("le")
        if le is not None:
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets or None


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative buckets {le: count}: linear within the bucket that holds
    the rank; the highest finite bound when the rank falls in ``+Inf``. None when there is no observation."""
    ordered = sorted(((float(le), count) for le, count in buckets.items()), key=lambda b: b[0])
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return ordered[-2][0] if len(ordered) > 1 else None


def bucket_delta(now: dict[str, float], before: dict[str, float] | None) -> dict[str, float] | None:
    """Observations between two scrapes; a counter that went down (the pod restarted) counts from zero, as
    Prometheus' ``rate`` does. None without a previous scrape."""
    if before is None:
        return None
    if any(now.get(le, 0.0) < count for le, count in before.items()):
        return dict(now)
    return {le: count - before.get(le, 0.0) for le, count in now.items()}


# --- measuring ------------------------------------------------------------------------------------------------------


@dataclass
class Reading:
    """One measurement of a deployment's replicas: the value compared with the target (None: nothing to judge
    yet), per-replica values, the histograms kept for the next delta, and the replicas that did not answer."""

    value: float | None
    replicas: int
    pods: dict[str, float | None]
    snapshots: dict[str, dict[str, float]]
    errors: dict[str, str]
    note: str = ""


def serving_pods(pods: list[dict]) -> list[str]:
    """Names of the runtime pods that are Running, Ready and not being deleted (the ones a Service would use)."""
    names = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if status.get("phase") == "Running" and ready and not meta.get("deletionTimestamp"):
            names.append(meta.get("name", ""))
    return sorted(n for n in names if n)


def scrape(gw: ClusterGateway, namespace: str, pod: str) -> str:
    """One replica's ``/metrics`` through the API server's pod proxy."""
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}:{SERVING_PORT}/proxy/metrics"
    return gw.request("GET", path, raw=True)


def measure(gw: ClusterGateway, deployment: Deployment, policy: Policy, previous: dict) -> Reading:
    """Read every serving replica's metrics and reduce them to the policy's value (see the module docstring)."""
    pods = serving_pods(
        gw.list("v1", "Pod", deployment.namespace, label_selector=f"{DEPLOYMENT_LABEL}={deployment.pk}")
    )
    names = set(SERIES[policy.metric])
    if policy.metric == Metric.TTFT_P95:
        names = {f"{n}_bucket" for n in names}
    per_pod: dict[str, float | None] = {}
    snapshots: dict[str, dict[str, float]] = {}
    deltas: list[dict[str, float]] = []
    errors: dict[str, str] = {}
    for pod in pods:
        try:
            samples = parse_samples(scrape(gw, deployment.namespace, pod), names)
        except GatewayError as exc:
            errors[pod] = str(exc)[:300]
            continue
        if policy.metric == Metric.TTFT_P95:
            buckets = histogram(samples, SERIES[Metric.TTFT_P95][0])
            if buckets is None:
                errors[pod] = "no vllm:time_to_first_token_seconds histogram in /metrics"
                continue
            snapshots[pod] = buckets
            delta = bucket_delta(buckets, previous.get(pod))
            if delta is not None:
                deltas.append(delta)
                p95 = quantile(0.95, delta)
                per_pod[pod] = None if p95 is None else round(p95 * 1000.0, 3)
            continue
        series = next((n for n in SERIES[policy.metric] if n in samples), None)
        if series is None:
            errors[pod] = f"none of {', '.join(SERIES[policy.metric])} in /metrics"
            continue
        per_pod[pod] = sum(v for _labels, v in samples[series])
    measured = len(per_pod)
    if policy.metric == Metric.TTFT_P95:
        if not deltas:
            note = "first scrape of the TTFT histogram; the p95 needs a second one" if snapshots else ""
            return Reading(None, 0, per_pod, snapshots, errors, note)
        total: dict[str, float] = {}
        for delta in deltas:
            for le, count in delta.items():
                total[le] = total.get(le, 0.0) + count
        p95 = quantile(0.95, total)
        value = 0.0 if p95 is None else round(p95 * 1000.0, 3)  # no request since the last scrape: no load
        return Reading(value, measured, per_pod, snapshots, errors)
    if not measured:
        return Reading(None, 0, per_pod, snapshots, errors)
    values = [v for v in per_pod.values() if v is not None]
    value = sum(values) / measured
    return Reading(round(value, 6), measured, per_pod, snapshots, errors)


# --- deciding -------------------------------------------------------------------------------------------------------


def recommend(policy: Policy, current: int, reading: Reading) -> tuple[int, float]:
    """(recommended replicas clamped to the policy's range, ratio value/target): HPA's rule, step 1."""
    ratio = (reading.value or 0.0) / policy.target
    # 1e-9: a ratio that is a whole number after floating-point division must not round up to one more replica.
    raw = current if abs(ratio - 1.0) <= policy.tolerance else math.ceil(reading.replicas * ratio - 1e-9)
    return max(policy.min_replicas, min(policy.max_replicas, raw)), ratio


def stabilise(
    policy: Policy, current: int, recommendations: list[list[float]], now: float
) -> tuple[int, list[list[float]]]:
    """HPA's behaviour windows (step 2): ``recommendations`` are [epoch seconds, replicas], the newest last.
    Returns the stabilised count and the recommendations still inside the longer window."""
    keep = max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
    kept = [r for r in recommendations if now - r[0] <= keep]
    up = min(int(r[1]) for r in kept if now - r[0] <= policy.scale_up_stabilization_seconds)
    down = max(int(r[1]) for r in kept if now - r[0] <= policy.scale_down_stabilization_seconds)
    desired = current
    if desired < up:
        desired = up
    if desired > down:
        desired = down
    return desired, kept


def replicas_that_fit(gw: ClusterGateway, deployment: Deployment, extra: int) -> tuple[int, str]:
    """How many of ``extra`` more replicas fit on the cluster now (inventory read again, the deployment's device
    type), and placement's reason when not all do. Fitting is monotonic (k fit ⇒ k-1 fit): a binary search."""
    refresh_inventory(deployment.cluster, gw)
    nodes = services.node_capacities(deployment.cluster)
    device = (deployment.placement.get("candidate") or {}).get("device_type")

    def fits(k: int) -> str:
        try:
            services.place(deployment.config, nodes, replicas=k, device_type=device)
        except placement_engine.PlacementError as exc:
            return str(exc)
        return ""

    why = fits(extra)
    if not why:
        return extra, ""
    low, high = 0, extra - 1  # low fits (0 always does), extra does not
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            high = middle - 1
        else:
            low = middle
    return low, why


# --- state ----------------------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def condition(state: dict) -> dict:
    return state.get("condition") or {}


def with_condition(state: dict, status: str, reason: str, message: str, now: datetime) -> tuple[dict, bool]:
    """The state with its ScalingReady condition set; True when status or reason changed (an event is due)."""
    old = condition(state)
    changed = (old.get("status"), old.get("reason")) != (status, reason)
    state["condition"] = {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "last_transition_time": _iso(now) if changed else old.get("last_transition_time", _iso(now)),
    }
    return state, changed


def initial_state(policy: Policy, now: datetime) -> dict:
    state, _ = with_condition(
        {}, "Unknown", "AwaitingMetrics", f"policy set ({policy.describe()}); not evaluated yet", now
    )
    return state


def record(deployment: Deployment, message: str, data: dict) -> None:
    """A decision: the deployment's log row and the outbox event, with the metric values that caused it."""
    DeploymentEvent.objects.create(deployment=deployment, kind=EVENT_KIND, message=message[:4000], data=data)
    core_events.emit(
        "deployment.autoscaled",
        f"deployments/{deployment.pk}",
        {"deployment": deployment.pk, "name": deployment.name, "message": message[:4000], **data},
    )


def public_state(deployment: Deployment) -> dict | None:
    """What the API and the admin show: the policy, the condition, the last evaluation and the last scale."""
    if not deployment.autoscaling:
        return None
    state = deployment.autoscaling_state or {}
    return {
        "policy": deployment.autoscaling,
        "conditions": [state["condition"]] if state.get("condition") else [],
        "desired_replicas": state.get("desired_replicas"),
        "last_evaluation": state.get("last_evaluation"),
        "last_scale": state.get("last_scale"),
    }


# --- setting the policy ---------------------------------------------------------------------------------------------


def set_policy(deployment: Deployment, policy: Policy, *, user: Any = None) -> Deployment:
    """Store ``policy`` (replacing any) with a fresh state; the next evaluation applies it."""
    _refuse_if_gone(deployment)
    now = timezone.now()
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(
            autoscaling=policy.as_dict(), autoscaling_state=initial_state(policy, now), updated_at=now
        )
        who = f" by {user.get_username()}" if getattr(user, "is_authenticated", False) else ""
        record(deployment, f"autoscaling policy set{who}: {policy.describe()}", {"policy": policy.as_dict()})
    deployment.refresh_from_db()
    return deployment


def clear_policy(deployment: Deployment, *, user: Any = None) -> bool:
    """Remove the policy (replicas stay where they are); False when there was none."""
    with transaction.atomic():
        cleared = (
            Deployment.objects.filter(pk=deployment.pk)
            .exclude(autoscaling={})
            .update(autoscaling={}, autoscaling_state={}, updated_at=timezone.now())
        )
        if cleared:
            who = f" by {user.get_username()}" if getattr(user, "is_authenticated", False) else ""
            record(
                deployment,
                f"autoscaling policy cleared{who}; replicas stay at {deployment.replicas}",
                {"policy": None},
            )
    deployment.refresh_from_db()
    return bool(cleared)


def _refuse_if_gone(deployment: Deployment) -> None:
    if deployment.status in (DeploymentStatus.DELETING, DeploymentStatus.DELETED):
        code = (
            services.Code.ALREADY_DELETING
            if deployment.status == DeploymentStatus.DELETING
            else services.Code.ALREADY_DELETED
        )
        raise services.DeploymentRefused(
            f"deployment {deployment.name} is {deployment.status}; it cannot be autoscaled",
            code=code,
            status=409,
        )


# --- evaluating -----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """An evaluation's result: the new state, and what to record and start if the state is still current."""

    state: dict
    events: list[tuple[str, dict]]
    scale_to: int | None = None
    scale_message: str = ""
    scale_data: dict | None = None


def _last_scale_end(state: dict) -> tuple[datetime | None, bool]:
    """(when the last scale's run ended, whether it is still in progress)."""
    last = state.get("last_scale") or {}
    if not last:
        return None, False
    if last.get("finished_at"):
        return parse_datetime(last["finished_at"]), False
    run = Run.objects.filter(pk=last.get("run_id")).only("status", "finished_at").first()
    if run is None:
        return parse_datetime(last["time"]), False
    if run.status in RunStatus.active():
        return None, True
    last["finished_at"] = _iso(run.finished_at or timezone.now())
    last["run_status"] = run.status
    return run.finished_at, False


def decide(deployment: Deployment, policy: Policy, state: dict, now: datetime) -> Outcome:
    """One evaluation of ``deployment`` (see the module docstring); writes nothing."""
    state = copy.deepcopy(state)  # ``state`` is also the compare-and-set token: never changed in place
    events: list[tuple[str, dict]] = []

    def set_condition(status: str, reason: str, message: str, data: dict | None = None) -> None:
        nonlocal state
        state, changed = with_condition(state, status, reason, message, now)
        if changed:
            events.append(
                (
                    f"{CONDITION} {status} ({reason}): {message}",
                    {"condition": state["condition"], **(data or {})},
                )
            )

    if deployment.cluster.status != ClusterStatus.AVAILABLE:
        set_condition(
            "False", "MetricsUnavailable", f"cluster {deployment.cluster.name} is {deployment.cluster.status}"
        )
        return Outcome(state, events)
    ended, in_progress = _last_scale_end(state)
    running = services.active_run(deployment)
    if in_progress or running is not None:
        # Any run of the deployment (a scale, an upgrade, a benchmark) holds decisions: the update run refuses to
        # start beside one, and metrics measured during a rollout are not the steady state's.
        what = running.title if running is not None else "the last scale"
        set_condition("True", "RunInProgress", f"{what} is in progress; nothing is decided meanwhile")
        if in_progress:
            # The scale's target stands as the recommendation until its run ends: the scale-down window then counts
            # from when the new replicas serve, not from the decision (a rollout longer than the window would
            # otherwise let the first quiet reading after it undo the scale at once).
            history = [list(r) for r in state.get("recommendations") or []]
            history.append([now.timestamp(), int(state["last_scale"]["to"])])
            _, state["recommendations"] = stabilise(policy, deployment.replicas, history, now.timestamp())
        return Outcome(state, events)
    if deployment.status not in (DeploymentStatus.RUNNING, DeploymentStatus.DEGRADED):
        set_condition("False", "NotServing", f"the deployment is {deployment.status}; nothing to measure")
        return Outcome(state, events)

    current = deployment.replicas
    timeout = float(settings.AUTOSCALING_SCRAPE_TIMEOUT)
    try:
        # A connection of its own (reuse=False): the beat evaluates many deployments on threads at once.
        with gateway_for(deployment.cluster, timeout=timeout, reuse=False) as gw:
            reading = measure(gw, deployment, policy, state.get("snapshots") or {})
            plan = _plan(policy, current, reading, state, ended, now)
            fit_note = ""
            if plan.get("scale_to") and plan["scale_to"] > current:
                wanted = plan["scale_to"]
                fit, why = replicas_that_fit(gw, deployment, wanted - current)
                plan["placement"] = {"wanted": wanted, "fits": current + fit, "reason": why}
                if fit < wanted - current:
                    plan["scale_to"] = current + fit if fit else None
                    fit_note = why
    except GatewayError as exc:
        set_condition("False", "MetricsUnavailable", f"could not read the replicas' metrics: {exc}")
        return Outcome(state, events)

    state["snapshots"] = reading.snapshots
    state["recommendations"] = plan["recommendations"]
    evaluation = {
        "time": _iso(now),
        "metric": policy.metric,
        "value": reading.value,
        "target": policy.target,
        "replicas": current,
        "measured_replicas": reading.replicas,
        "pods": reading.pods,
        **({"errors": reading.errors} if reading.errors else {}),
        **{k: plan[k] for k in ("ratio", "recommendation", "stabilized", "decision", "why") if k in plan},
        **({"placement": plan["placement"]} if "placement" in plan else {}),
    }
    state["last_evaluation"] = evaluation
    if reading.value is None:
        if reading.note:
            set_condition("Unknown", "AwaitingMetrics", reading.note)
        else:
            detail = "; ".join(f"{pod}: {err}" for pod, err in reading.errors.items()) or "no serving replica"
            set_condition("False", "MetricsUnavailable", f"no replica's metrics could be read ({detail})")
        return Outcome(state, events)

    state["desired_replicas"] = plan["stabilized"]
    summary = (
        f"{policy.metric} {reading.value:g} vs target {policy.target:g} over {reading.replicas} replica(s)"
    )
    target = plan.get("scale_to")
    if target is None and "placement" in plan:
        message = (
            f"wants {plan['stabilized']} replicas ({summary}) but no more replica fits on the cluster: "
            f"{plan['placement']['reason']}"
        )
        set_condition("False", "NoCapacity", message, {"evaluation": evaluation})
        return Outcome(state, events)
    if target is None:
        set_condition("True", "ScalingActive", f"{current} replicas: {plan['why']} ({summary})")
        return Outcome(state, events)

    direction = "up" if target > current else "down"
    message = f"scale {direction} {current} → {target}: {summary}"
    if fit_note:
        message += f"; wanted {plan['placement']['wanted']} but only {target} fit: {fit_note}"
        set_condition(
            "True",
            "ScalingLimited",
            f"scaling to {target} of the {plan['placement']['wanted']} wanted: {fit_note}",
        )
    else:
        set_condition("True", "ScalingActive", message)
    state["last_scale"] = {"time": _iso(now), "from": current, "to": target, "direction": direction}
    evaluation["decision"] = f"scale_{direction}"
    return Outcome(
        state, events, scale_to=target, scale_message=message, scale_data={"evaluation": evaluation}
    )


def _plan(
    policy: Policy, current: int, reading: Reading, state: dict, ended: datetime | None, now: datetime
) -> dict:
    """Steps 1-3 of the decision on a reading: the recommendation, the stabilised count, and whether a cooldown
    holds it. ``scale_to`` is set when a scale is due (before the placement check)."""
    epoch = now.timestamp()
    history = [list(r) for r in state.get("recommendations") or []]
    if reading.value is None:
        return {"recommendations": history}
    raw, ratio = recommend(policy, current, reading)
    history.append([epoch, raw])
    stabilized, kept = stabilise(policy, current, history, epoch)
    plan: dict[str, Any] = {
        "recommendations": kept,
        "ratio": round(ratio, 4),
        "recommendation": raw,
        "stabilized": stabilized,
        "decision": "hold",
    }
    if stabilized == current:
        if raw == current:
            plan["why"] = (
                "within tolerance"
                if policy.min_replicas <= current <= policy.max_replicas
                else "at the limit"
            )
        else:
            window = (
                policy.scale_down_stabilization_seconds
                if raw < current
                else policy.scale_up_stabilization_seconds
            )
            plan["why"] = f"recommendation {raw} held by the {window:g}s stabilization window"
        return plan
    cooldown = (
        policy.scale_up_cooldown_seconds if stabilized > current else policy.scale_down_cooldown_seconds
    )
    if ended is not None and (now - ended).total_seconds() < cooldown:
        left = cooldown - (now - ended).total_seconds()
        plan["why"] = f"wants {stabilized}; cooling down for {left:.0f}s more after the last scale"
        return plan
    plan["scale_to"] = stabilized
    plan["why"] = f"scale to {stabilized}"
    return plan


def evaluate(deployment: Deployment) -> dict:
    """Evaluate one deployment's policy; scale through the update run when due (compare-and-set, see above)."""
    if not deployment.autoscaling:
        return {"deployment": deployment.pk, "skipped": "no policy"}
    policy = Policy.from_dict(deployment.autoscaling)
    before = deployment.autoscaling_state or {}
    now = timezone.now()
    outcome = decide(deployment, policy, before, now)
    with transaction.atomic():
        current = (
            Deployment.objects.select_for_update()
            .filter(pk=deployment.pk, autoscaling=deployment.autoscaling, autoscaling_state=before)
            .first()
        )
        if current is None:
            return {"deployment": deployment.pk, "skipped": "policy or state changed meanwhile"}
        for message, data in outcome.events:
            record(current, message, data)
        result: dict[str, Any] = {"deployment": deployment.pk, "condition": outcome.state.get("condition")}
        if outcome.scale_to is not None:
            try:
                run = services.start_update(current, replicas=outcome.scale_to)
            except services.DeploymentRefused as exc:
                outcome.state.pop("last_scale", None)
                outcome.state, _ = with_condition(
                    outcome.state, "True", "RunInProgress", f"scale to {outcome.scale_to} refused: {exc}", now
                )
                result["refused"] = str(exc)
            else:
                outcome.state["last_scale"]["run_id"] = str(run.pk)
                record(current, outcome.scale_message, {**(outcome.scale_data or {}), "run_id": str(run.pk)})
                result["scaled"] = {"to": outcome.scale_to, "run_id": str(run.pk)}
        Deployment.objects.filter(pk=deployment.pk).update(autoscaling_state=outcome.state)
    return result


def evaluate_all() -> dict:
    """The autoscaling beat: every deployment with a policy, in parallel (``AUTOSCALING_CONCURRENCY`` threads)."""
    started = time.monotonic()
    deployments = list(
        Deployment.objects.exclude(autoscaling={})
        .exclude(status=DeploymentStatus.DELETED)
        .select_related("cluster", "release")
        .defer("credentials")
    )
    results = []
    for deployment, outcome in sweep_each(
        deployments,
        evaluate,
        workers=int(settings.AUTOSCALING_CONCURRENCY),
        name="autoscaling",
    ):
        if isinstance(outcome, BaseException):  # one broken deployment must not stop the others
            logger.error("autoscaling of deployment %s crashed", deployment.pk, exc_info=outcome)
            outcome = {"deployment": deployment.pk, "error": f"{type(outcome).__name__}: {outcome}"}
        results.append(outcome)
    return {
        "evaluated": len(results),
        "scaled": [r for r in results if r.get("scaled")],
        "seconds": round(time.monotonic() - started, 3),
    }


__all__ = [
    "Metric",
    "Policy",
    "clear_policy",
    "decide",
    "evaluate",
    "evaluate_all",
    "public_state",
    "quantile",
    "recommend",
    "set_policy",
    "stabilise",
]
