"""Hardware collection: roll out the collectors chart, wait until it runs everywhere, store the inventory.

These steps end cluster registration (``budcluster_site.workflows`` composes ``COLLECT_STEPS`` into
``cluster.register``) and make up the ``hardware.collect`` workflow, which ``hardware.services.start_collection``
starts (``POST /clusters/{id}/collect-node-info`` and the cluster admin's action).

The wait is per node: each check names the nodes whose collectors are not ready yet (or whose labels are not
published yet) and why. A node that cannot run them - NotReady: its kubelet is down, so no pod there becomes ready
until it comes back - holds the wait at most ``COLLECTOR_NOT_READY_TIMEOUT`` seconds; any other node at most
``COLLECTOR_TIMEOUT``. Then the collection goes on without them: ``read_nodes`` stores what the cluster shows (the
left-out node with its NotReady status and whatever labels it had) and the run ends partial, its ``read_nodes``
output and a run event and a cluster event naming each node not collected and why. Only when no node could be
collected, or a collector DaemonSet never got its pods scheduled, does the wait fail.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from clusters.releases import install_or_upgrade
from clusters.services import gateway_for, record_event, step_cluster
from clusters.workflows import step_error
from core.gateway import ClusterGateway, GatewayError
from core.helm import ChartError
from core.models import RunEvent
from core.workflow import NotYet, Poll, Step, StepContext, StepFailed, Workflow

from .services import refresh_inventory, unlabelled_nodes

COLLECTOR_CHART = "node_info_collector"
COLLECTOR_RELEASE = "bud-node-info"


def collector_namespace() -> str:
    return getattr(settings, "COLLECTOR_NAMESPACE", "bud-system")


def ensure_collectors(ctx: StepContext) -> dict:
    """Install or upgrade the collectors release (idempotent server-side apply; revision stored)."""
    cluster = step_cluster(ctx)
    values = {"namespace": collector_namespace(), **getattr(settings, "COLLECTOR_VALUES", {})}
    try:
        with gateway_for(cluster, timeout=30) as gw:
            revision = install_or_upgrade(
                gw, cluster, chart=COLLECTOR_CHART, release=COLLECTOR_RELEASE, namespace=values["namespace"],
                values=values, description="node info collectors",
            )  # fmt: skip
    except GatewayError as exc:
        raise step_error(exc) from None
    except ChartError as exc:
        raise StepFailed(str(exc)) from None
    daemonsets = [o["name"] for o in revision.applied if o["kind"] == "DaemonSet"]
    return {"revision": revision.number, "daemonsets": daemonsets, "namespace": values["namespace"]}


# --- the wait ----------------------------------------------------------------------------------------------------


@dataclass
class CollectorState:
    """One check of the collectors: the cluster's nodes, what holds each node back, what holds everything back."""

    nodes: list[str]
    not_ready_for: dict[str, float | None]  # NotReady nodes: seconds since their Ready condition changed
    blocked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    pending: list[str] = field(default_factory=list)  # not about one node (a DaemonSet not scheduled yet)

    def reasons(self) -> dict[str, str]:
        return {node: "; ".join(self.blocked[node]) for node in sorted(self.blocked)}

    def describe(self) -> str:
        return "; ".join([*self.pending, *(f"{node}: {why}" for node, why in self.reasons().items())])


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c.get("type") == kind), {})


def _pod_state(pod: dict) -> str:
    """Why a collector pod is not ready, as kubectl shows it: the waiting reason, else phase and condition."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return waiting["reason"]
    ready = _condition(pod, "Ready")
    detail = f" ({ready['reason']})" if ready.get("reason") else ""
    return f"{status.get('phase') or 'Pending'}, not ready{detail}"


def _seconds_since(stamp: Any, now: datetime) -> float | None:
    moment = parse_datetime(stamp) if isinstance(stamp, str) else None
    return max(0.0, (now - moment).total_seconds()) if moment else None


def collector_state(gw: ClusterGateway, namespace: str, daemonsets: list[str]) -> CollectorState:
    """Read the nodes, the collector DaemonSets and their pods once; say what each waiting node waits for."""
    now = timezone.now()
    nodes = {n["metadata"]["name"]: n for n in gw.list("v1", "Node")}
    not_ready_for = {}
    for name, node in nodes.items():
        ready = _condition(node, "Ready")
        if ready.get("status") != "True":
            not_ready_for[name] = _seconds_since(ready.get("lastTransitionTime"), now)
    state = CollectorState(nodes=sorted(nodes), not_ready_for=not_ready_for)
    found = {}
    for name in daemonsets:
        ds = found[name] = gw.get_or_none("apps/v1", "DaemonSet", name, namespace)
        desired = ((ds or {}).get("status") or {}).get("desiredNumberScheduled")
        if ds is None or desired is None:
            state.pending.append(f"{name} not started yet")
            continue
        match = ((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        on_node: dict[str, dict] = {}
        for pod in gw.list("v1", "Pod", namespace, label_selector=selector) if selector else []:
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in nodes or (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if node not in on_node or _condition(pod, "Ready").get("status") == "True":
                on_node[node] = pod  # a ready pod of a node wins over one still starting (rolling update)
        for node, pod in sorted(on_node.items()):
            if _condition(pod, "Ready").get("status") != "True":
                state.blocked[node].append(f"{name} pod {_pod_state(pod)}")
        if len(on_node) < desired:
            state.pending.append(f"{name} {len(on_node)}/{desired} pods scheduled")
    if not state.pending:
        # Ready pods are not yet published labels: NFD's master labels a node only after its worker sent the
        # node's features, GFD after it read the devices. Read nodes once they carry them.
        for node in unlabelled_nodes(gw, namespace, found):
            if node not in state.blocked:
                state.blocked[node].append("feature labels not published yet")
    for node, reasons in state.blocked.items():
        if node in not_ready_for:
            ready = _condition(nodes[node], "Ready")
            why = ": ".join(part for part in (ready.get("reason"), ready.get("message")) if part)
            reasons.insert(0, f"node NotReady ({why or 'no Ready condition'})")
    return state


def _waited(ctx: StepContext) -> float:
    started = getattr(getattr(ctx, "step", None), "started_at", None)
    return (timezone.now() - started).total_seconds() if started else 0.0


def wait_collectors(ctx: StepContext):
    """Every collector DaemonSet has a ready pod on each node it should run on, and those nodes carry the labels
    the collectors publish - or the nodes still missing them are given up (see the module docstring): then the
    output's ``not_collected`` names them with the reason, and ``read_nodes`` stores the rest."""
    cluster = step_cluster(ctx)
    rollout = ctx.outputs["ensure_collectors"]
    try:
        with gateway_for(cluster) as gw:
            state = collector_state(gw, rollout["namespace"], rollout["daemonsets"])
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    if not state.pending and not state.blocked:
        return {"ready": rollout["daemonsets"], "not_collected": {}}
    if state.pending:  # nothing to name a node for: wait, up to the step's deadline
        return NotYet(state.describe())
    waited = _waited(ctx)
    not_ready_wait = float(settings.COLLECTOR_NOT_READY_TIMEOUT)
    given_up_not_ready = all(
        node in state.not_ready_for and max(waited, state.not_ready_for[node] or 0.0) >= not_ready_wait
        for node in state.blocked
    )
    # The last check before the step's deadline (COLLECTOR_TIMEOUT) takes what is there instead of failing.
    last_check = waited + float(settings.COLLECTOR_POLL_INTERVAL) >= float(settings.COLLECTOR_TIMEOUT)
    if not (given_up_not_ready or last_check):
        return NotYet(state.describe())
    if len(state.blocked) >= len(state.nodes):
        raise StepFailed(f"no node could be collected: {state.describe()}")
    return {"ready": rollout["daemonsets"], "not_collected": state.reasons()}


def read_nodes(ctx: StepContext) -> dict:
    """Read every Node and running Pod once and store the inventory. When the wait gave nodes up, the outcome is
    partial: the output, a run event and a cluster event name each node not collected and why."""
    cluster = step_cluster(ctx)
    not_collected = (ctx.outputs.get("wait_collectors") or {}).get("not_collected") or {}
    try:
        with gateway_for(cluster, timeout=60) as gw:
            counts = refresh_inventory(cluster, gw)
    except GatewayError as exc:
        raise step_error(exc) from None
    if not not_collected:
        return counts
    message = (
        f"partial inventory: {len(not_collected)} of {counts['nodes']} nodes not collected: "
        + "; ".join(f"{node} ({why})" for node, why in not_collected.items())
        + ". The other nodes are stored; these as the cluster shows them, without what the collectors add."
    )
    # Once per run, also when this step runs again after its worker died.
    if not RunEvent.objects.filter(run_id=ctx.run.pk, step=ctx.step.name, data__outcome="partial").exists():
        ctx.event(message, outcome="partial", not_collected=not_collected)
        record_event(cluster, "inventory", message)
    return {**counts, "partial": True, "not_collected": not_collected}


COLLECT_STEPS = [
    Step("ensure_collectors", "Roll out hardware collectors", ensure_collectors, eta=5),
    Step(
        "wait_collectors",
        "Wait for collectors on every node",
        wait_collectors,
        eta=20,
        poll=Poll(
            interval=lambda ctx: float(settings.COLLECTOR_POLL_INTERVAL),
            timeout=lambda ctx: float(settings.COLLECTOR_TIMEOUT),
            what="the collector DaemonSets to be ready on every eligible node",
        ),
    ),
    Step("read_nodes", "Read nodes and store the inventory", read_nodes, eta=3),
]

COLLECT = Workflow(kind="hardware.collect", title="Collect node information", steps=COLLECT_STEPS)
