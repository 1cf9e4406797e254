"""Hardware collection: roll out the collectors chart, wait until it runs everywhere, store the inventory.

These steps end cluster registration (``budcluster_site.workflows`` composes ``COLLECT_STEPS`` into
``cluster.register``) and make up the ``hardware.collect`` workflow, which ``hardware.services.start_collection``
starts (``POST /clusters/{id}/collect-node-info`` and the cluster admin's action).
"""

from __future__ import annotations

from django.conf import settings

from clusters.releases import install_or_upgrade
from clusters.services import gateway_for, step_cluster
from clusters.workflows import step_error
from core.gateway import GatewayError
from core.helm import ChartError
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


def wait_collectors(ctx: StepContext):
    """Every collector DaemonSet has a ready pod on each node it should run on, and those nodes carry the
    labels the collectors publish."""
    cluster = step_cluster(ctx)
    rollout = ctx.outputs["ensure_collectors"]
    pending = []
    try:
        with gateway_for(cluster) as gw:
            daemonsets = {}
            for name in rollout["daemonsets"]:
                ds = daemonsets[name] = gw.get_or_none("apps/v1", "DaemonSet", name, rollout["namespace"])
                status = (ds or {}).get("status") or {}
                desired = status.get("desiredNumberScheduled")
                ready = status.get("numberReady", 0)
                if ds is None or desired is None or ready < desired:
                    pending.append(f"{name} {ready}/{desired if desired is not None else '?'} ready")
            if not pending:
                # Ready pods are not yet published labels: NFD's master labels a node only after its worker
                # sent the node's features, GFD after it read the devices. Read nodes once they carry them.
                unlabelled = unlabelled_nodes(gw, rollout["namespace"], daemonsets)
                if unlabelled:
                    pending.append("feature labels not yet on " + ", ".join(unlabelled))
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    if pending:
        return NotYet("; ".join(pending))
    return {"ready": rollout["daemonsets"]}


def read_nodes(ctx: StepContext) -> dict:
    """Read every Node and running Pod once and store the inventory."""
    cluster = step_cluster(ctx)
    try:
        with gateway_for(cluster, timeout=60) as gw:
            return refresh_inventory(cluster, gw)
    except GatewayError as exc:
        raise step_error(exc) from None


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
