"""Scheduling as pure functions over Pod and Node dicts (the kube-scheduler filters clients notice).

Filters run per node in the default profile's order and stop at the first failing plugin, so each node adds
one plugin's reasons to the FailedScheduling message (NodeResourcesFit may add several):
NodeUnschedulable -> TaintToleration (NoSchedule/NoExecute; PreferNoSchedule ignored) -> NodeAffinity
(nodeSelector + required terms with In/NotIn/Exists/DoesNotExist/Gt/Lt and matchFields metadata.name) ->
NodeResourcesFit (effective requests vs allocatable minus the requests of non-terminal pods already bound).
Feasible nodes are scored by least requested cpu/memory share (the default LeastAllocated strategy), ties
broken by name so placement is deterministic.

The failure message has the real shape, reasons counted and sorted as kube-scheduler's FitError does:
"0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: },
2 Insufficient nvidia.com/gpu."
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from devcluster.sim.objects import condition, pod_is_terminal, quantity

Usage = dict[str, Decimal]

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def container_requests(container: dict) -> Usage:
    """Effective requests of one container: requests, falling back to limits (API defaulting)."""
    res = container.get("resources") or {}
    out: Usage = {}
    for name, val in (res.get("limits") or {}).items():
        out[name] = quantity(val)
    for name, val in (res.get("requests") or {}).items():
        out[name] = quantity(val)
    return out


def pod_requests(pod: dict) -> Usage:
    """max(sum of app containers, any init container) + overhead, per resource, like the scheduler."""
    spec = pod.get("spec") or {}
    total: Usage = {}
    for c in spec.get("containers") or ():
        for k, v in container_requests(c).items():
            total[k] = total.get(k, Decimal(0)) + v
    for c in spec.get("initContainers") or ():
        for k, v in container_requests(c).items():
            if v > total.get(k, Decimal(0)):
                total[k] = v
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, Decimal(0)) + quantity(v)
    return {k: v for k, v in total.items() if v > 0}


def usage_by_node(pods: Iterable[dict]) -> dict[str, tuple[Usage, int]]:
    """Requested resources and pod count per node, over non-terminal bound pods."""
    out: dict[str, tuple[Usage, int]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or pod_is_terminal(pod):
            continue
        used, count = out.get(node, ({}, 0))
        for k, v in pod_requests(pod).items():
            used[k] = used.get(k, Decimal(0)) + v
        out[node] = (used, count + 1)
    return out


def add_usage(usage: dict[str, tuple[Usage, int]], node: str, pod: dict) -> None:
    used, count = usage.get(node, ({}, 0))
    used = dict(used)
    for k, v in pod_requests(pod).items():
        used[k] = used.get(k, Decimal(0)) + v
    usage[node] = (used, count + 1)


# ------------------------------------------------------------------------------------------------ taints


def toleration_matches(tol: dict, taint: dict) -> bool:
    if tol.get("effect") and tol.get("effect") != taint.get("effect"):
        return False
    op = tol.get("operator") or "Equal"
    if op == "Exists":
        return not tol.get("key") or tol.get("key") == taint.get("key")
    return tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(
    node: dict, tolerations: list[dict] | None, effects: tuple[str, ...] = ("NoSchedule", "NoExecute")
) -> dict | None:
    for taint in (node.get("spec") or {}).get("taints") or ():
        if taint.get("effect") not in effects:
            continue
        if not any(toleration_matches(t, taint) for t in tolerations or ()):
            return taint
    return None


def node_taints(node: dict) -> list[dict]:
    """Declared taints plus the ones the node lifecycle controller derives from conditions."""
    taints = list((node.get("spec") or {}).get("taints") or ())
    keys = {t.get("key") for t in taints}
    ready = condition(node, "Ready")
    if (ready is None or ready.get("status") != "True") and NOT_READY_TAINT not in keys:
        taints.append({"key": NOT_READY_TAINT, "effect": "NoSchedule"})
    return taints


# ------------------------------------------------------------------------------------------------ affinity


def _expr_matches(expr: dict, labels: dict) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    present = key in labels
    val = labels.get(key)
    if op == "In":
        return present and val in values
    if op == "NotIn":
        return not present or val not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        try:
            left, right = int(val), int(values[0])
        except (TypeError, ValueError):
            return False
        return left > right if op == "Gt" else left < right
    return False


def node_selector_term_matches(term: dict, node: dict) -> bool:
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term selects no node
    labels = node["metadata"].get("labels") or {}
    if not all(_expr_matches(e, labels) for e in exprs):
        return False
    field_values = {"metadata.name": node["metadata"]["name"]}
    return all(_expr_matches(f, field_values) for f in fields)


def node_matches_pod(pod: dict, node: dict) -> bool:
    """nodeSelector and requiredDuringSchedulingIgnoredDuringExecution node affinity."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if terms is not None:
        return any(node_selector_term_matches(t, node) for t in terms)
    return True


# ------------------------------------------------------------------------------------------------ filters


def taint_reason(taint: dict) -> str:
    return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"


def filter_node(pod: dict, node: dict, used: Usage | None = None, pod_count: int = 0) -> list[str]:
    """Why `pod` cannot run on `node` (empty list: it fits)."""
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if (node.get("spec") or {}).get("unschedulable"):
        unsched = {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
        if not any(toleration_matches(t, unsched) for t in tolerations):
            return ["node(s) were unschedulable"]
    taint = untolerated_taint({"spec": {"taints": node_taints(node)}}, tolerations)
    if taint is not None:
        return [taint_reason(taint)]
    if not node_matches_pod(pod, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    alloc = (node.get("status") or {}).get("allocatable") or {}
    used = used or {}
    reasons = []
    if pod_count + 1 > quantity(alloc.get("pods", 110)):
        reasons.append("Too many pods")
    for res, want in sorted(pod_requests(pod).items()):
        if want > quantity(alloc.get(res)) - used.get(res, Decimal(0)):
            reasons.append(f"Insufficient {res}")
    return reasons


def _score(pod: dict, node: dict, used: Usage) -> Decimal:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    req = pod_requests(pod)
    score = Decimal(0)
    for res in ("cpu", "memory"):
        cap = quantity(alloc.get(res))
        if cap > 0:
            score += (used.get(res, Decimal(0)) + req.get(res, Decimal(0))) / cap
    return score


def failure_message(total: int, reasons: Counter) -> str:
    parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
    return f"0/{total} nodes are available: {', '.join(parts)}."


def schedule(pod: dict, nodes: list[dict], usage: dict[str, tuple[Usage, int]]) -> tuple[str | None, str]:
    """Pick a node for `pod`; returns (node name, "") or (None, FailedScheduling message)."""
    if not nodes:
        return None, "no nodes available to schedule pods"
    reasons: Counter = Counter()
    feasible: list[tuple[Decimal, str]] = []
    for node in nodes:
        name = node["metadata"]["name"]
        used, count = usage.get(name, ({}, 0))
        failed = filter_node(pod, node, used, count)
        if failed:
            for r in failed:
                reasons[r] += 1
        else:
            feasible.append((_score(pod, node, used), name))
    if feasible:
        feasible.sort()
        return feasible[0][1], ""
    return None, failure_message(len(nodes), reasons)
