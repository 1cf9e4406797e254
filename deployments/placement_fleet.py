"""Where a model can run across every cluster: one best candidate per cluster, ranked, and why the others refuse.

Pure and fast like ``deployments/placement.py``, whose steps it reuses (no Django, no I/O): the caller maps the
stored inventory of all clusters to ``ClusterInventory`` rows (two queries, whatever the number of clusters).

Design
------
* The request is checked and its node-independent figures computed once (``prepare_plan``), and every node class
  (same device, product, memory; same CPU ISA) is evaluated once for the whole fleet: the class cache, the class's
  thresholds (free devices, host memory, CPU at its smallest fitting TP) and its bound (``class_bound``: no
  candidate of the class sorts before it) are shared by all clusters.
* Each cluster contributes at most one candidate, its best (the single-cluster order: accelerators before CPU, then
  fewest devices, then most headroom), and it is ranked without building it: its nodes are scanned once (a few
  comparisons each) into the fitting nodes of each class, from which the sort key of the class's best candidate
  follows. For accelerators: with one replica, or at least as many fitting nodes as replicas, the smallest TP
  places them all, and the key is the class's bound and its best-fit node (fewest free devices); with fewer nodes,
  their room at the smallest TP decides, since a node's room only shrinks as TP grows (the class places every
  replica there or nowhere, and the shortfall names the largest TP with room for some). For CPU: the nodes with the
  most free memory. Classes are tried best bound first and the search stops as soon as the best key beats the
  next class's bound. Only the clusters shown (``limit``, 20) have their candidate built, by the single-cluster
  search on their few nodes; ``tests/placement/test_fleet_equivalence.py`` checks the answer against planning
  every cluster alone.
* Clusters are ranked by their best candidate's sort key, then by cluster name (deterministic ties), then by the
  node the candidate starts on. A deploy that names no cluster takes the first.
* A cluster is refused as a whole with one sentence: not available (status and reason; it is not planned on,
  since a deploy there would be refused), inventory empty, too little room for all replicas (the shortfalls), or no
  node can take a replica. Its refusal and its list of refused nodes are built when read (an answer shows 200
  refused clusters of possibly thousands; the totals are counted while planning), and the node sentences when read,
  like the single-cluster plan's.
* Per cluster the plan keeps plain tuples, not objects: allocating little, it seldom wakes the garbage collector,
  whose full collection in a large process costs more than the plan itself.

Speed: 2,000 clusters of 10 nodes (20,000 nodes) plan in 8-17 ms (median; p95 at most 18 ms) on an idle 2-core
machine, the answer included (``.venv/bin/python benchmarks/placement.py``, fleet case).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import overload

from deployments.catalog import ModelSpec

from .placement import (
    ACCELERATOR_CPU_BASE_CORES,
    ACCELERATOR_CPU_CORES_PER_DEVICE,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    ISA_RANK,
    MIN_CPU_CORES,
    Candidate,
    MemoryEstimate,
    NodeCapacity,
    Refusal,
    RefusalList,
    class_bound,
    class_candidates,
    classify_nodes,
    no_fit_summary,
    plan_estimate,
    prepare_plan,
    refusal_reason,
)

# What a fleet answer shows by default: the top candidates, the refused clusters and a few node reasons each
# (the totals are always given; everything is kept on the result for callers that want more).
MAX_CANDIDATES = 20
MAX_REFUSED_CLUSTERS = 200
MAX_NODE_REFUSALS_PER_CLUSTER = 5


@dataclass(frozen=True, slots=True)
class ClusterInventory:
    """One cluster as the fleet planner sees it. ``unavailable`` (e.g. "not_available since …: API server not
    answering") keeps the cluster out of the plan with that reason."""

    id: int
    name: str
    nodes: Sequence[NodeCapacity] = ()
    status: str = "available"
    unavailable: str = ""


@dataclass(frozen=True, slots=True)
class FleetCandidate:
    """A cluster's best candidate, with the memory breakdown of its layout (device type and TP)."""

    cluster_id: int
    cluster_name: str
    candidate: Candidate
    estimate: MemoryEstimate

    def as_dict(self, rank: int) -> dict:
        return {
            "rank": rank,
            "cluster": self.cluster_id,
            "cluster_name": self.cluster_name,
            **self.candidate.as_dict(),
            "memory": self.estimate.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class ClusterRefusal:
    """A cluster that cannot take the deployment: one sentence why, and its nodes' reasons (formatted on read)."""

    cluster_id: int
    cluster_name: str
    status: str
    reason: str
    refusals: Sequence[Refusal] = ()

    def as_dict(self, *, max_refusals: int | None = MAX_NODE_REFUSALS_PER_CLUSTER) -> dict:
        refusals = self.refusals if max_refusals is None else self.refusals[:max_refusals]
        return {
            "cluster": self.cluster_id,
            "cluster_name": self.cluster_name,
            "status": self.status,
            "reason": self.reason,
            "refusals": [str(r) for r in refusals],
            "refusals_total": len(self.refusals),
        }


@dataclass(frozen=True, slots=True)
class FleetPlacement:
    """The fleet plan: ranked candidates (one per cluster that fits, best first) and the refused clusters."""

    model: ModelSpec
    summary: str  # the request in one phrase ("no placement for …" when nothing fits)
    clusters_total: int
    clusters_planned: int  # available clusters, whose inventory was planned on
    estimate: (
        MemoryEstimate  # the best candidate's layout; TP 1 on the requested device (cuda for auto) if none
    )
    candidates: tuple[FleetCandidate, ...]  # the first ``limit`` of them
    candidates_total: int = 0  # clusters that fit
    refused: Sequence[ClusterRefusal] = field(default=())  # by cluster name, each built when read

    @property
    def best(self) -> FleetCandidate:
        return self.candidates[0]

    @property
    def feasible(self) -> bool:
        return bool(self.candidates)

    def as_dict(
        self,
        *,
        max_candidates: int | None = MAX_CANDIDATES,
        max_refused: int | None = MAX_REFUSED_CLUSTERS,
        max_node_refusals: int | None = MAX_NODE_REFUSALS_PER_CLUSTER,
    ) -> dict:
        shown = self.candidates if max_candidates is None else self.candidates[:max_candidates]
        refused = self.refused if max_refused is None else self.refused[:max_refused]
        return {
            "clusters_total": self.clusters_total,
            "clusters_planned": self.clusters_planned,
            "candidates": [c.as_dict(rank) for rank, c in enumerate(shown, start=1)],
            "candidates_total": self.candidates_total,
            "refused_clusters": [r.as_dict(max_refusals=max_node_refusals) for r in refused],
            "refused_clusters_total": len(self.refused),
        }

    @property
    def node_refusals_total(self) -> int:
        if isinstance(self.refused, _RefusedClusters):
            return self.refused.node_refusals_total  # counted while planning: no refused cluster built
        return sum(len(r.refusals) for r in self.refused)

    def node_refusals(self, limit: int = 200) -> list[str]:
        """The first ``limit`` node reasons over every refused cluster, as "cluster/node: reason"."""
        out: list[str] = []
        for refusal in self.refused:
            for node in refusal.refusals[: limit - len(out)]:
                out.append(f"{refusal.cluster_name}/{node}")
            if len(out) >= limit:
                break
        return out


@dataclass(slots=True)
class _Fleet:
    """What one fleet plan shares across its clusters."""

    plan: object  # placement._Plan
    count: int  # replicas
    classes: dict = field(default_factory=dict)  # class key → evaluation (``classify_nodes``'s cache)
    gates: dict = field(default_factory=dict)  # class key → thresholds (see _gate)
    evaluations: dict = field(default_factory=dict)  # class key → (accelerator?, evaluation), fitting classes
    bounds: dict = field(default_factory=dict)  # class key → ``class_bound``, fitting classes
    order: list = field(default_factory=list)  # the fitting classes' keys, best bound first
    tied: bool = False  # two classes share a bound (only then is a cluster's first-seen order needed)
    reason: Callable[[NodeCapacity], str] | None = None  # why a refused node refuses


_REFUSED_CLASS = (None, 0, 0, 0)


def _gate(node: NodeCapacity, fleet: _Fleet) -> tuple:
    """What the scan needs of a node's class, once per plan: ``(kind, devices, memory, cpu)``.

    ``_REFUSED_CLASS`` when no node of the class can take a replica (a refused class, or no TP fits its devices);
    kind False for CPU (free memory and cores needed), True for accelerators (free devices, host memory and CPU
    needed at the smallest fitting TP). The class is evaluated by ``classify_nodes`` into the shared cache, which
    the refusal reasons and the full search read; its ``class_bound`` (no candidate of the class sorts before it)
    is kept beside.
    """
    key = node.class_key
    _, used = classify_nodes((node,), fleet.plan, fleet.classes)
    ev = used[key]
    if ev.refusal or not (ev.is_cpu or ev.fits):
        gate = _REFUSED_CLASS
    else:
        bound = class_bound(ev, fleet.count)
        if ev.is_cpu:
            gate = (False, 0, ev.host_need, MIN_CPU_CORES)
        else:
            gate = (True, ev.min_devices, ev.host_need, ev.min_cpu_millicores)
        fleet.tied = fleet.tied or bound in fleet.bounds.values()
        fleet.bounds[key] = bound
        fleet.evaluations[key] = (gate[0], ev)
        fleet.order.append(key)
        fleet.order.sort(key=fleet.bounds.__getitem__)
    fleet.gates[key] = gate
    return gate


def _scan(nodes: Sequence[NodeCapacity], fleet: _Fleet) -> dict[str, list[NodeCapacity]]:
    """The nodes of one cluster that can take a replica, per class (in node order; classes in the order of their
    first fitting node): ``classify_nodes``'s tests, without its per-class buckets (only the full candidate search
    reads them) nor the list of the refused nodes (every other node; only a refused cluster's reasons need it,
    when read).

    The hot loop of the fleet plan: a few attribute reads and comparisons per node. The tests are
    ``classify_nodes``'s (``tests/placement/test_fleet_equivalence.py`` compares the answers).
    """
    gates = fleet.gates
    fit: dict[str, list[NodeCapacity]] = {}
    for node in nodes:
        if not isinstance(node, NodeCapacity):
            raise ValueError(f"nodes must contain NodeCapacity rows, got {type(node).__name__}")
        if node.blocked_reason:
            continue
        key = node.class_key
        gate = gates.get(key)
        if gate is None:
            gate = _gate(node, fleet)
        if gate is _REFUSED_CLASS:
            continue
        kind, devices, memory, cpu = gate
        if kind:
            if (
                node.free_devices < devices
                or node.free_memory_bytes < memory
                or node.free_cpu_millicores < cpu
            ):
                continue
        elif node.free_memory_bytes < memory or node.cpu_request_cores < cpu:
            continue
        found = fit.get(key)
        if found is None:
            fit[key] = [node]
        else:
            found.append(node)
    return fit


def _accelerator_key(
    ev, bound: tuple, nodes: list[NodeCapacity], count: int, reasons: bool
) -> tuple[tuple | None, str, str]:
    """The best candidate of one accelerator class on ``nodes`` (its fitting nodes, in node order) without building
    it: ``Candidate.sort_key`` without the node name, the candidate's first node, and (``reasons``) the shortfall
    sentence when the class has room for some replicas but not all (key None).

    The search of ``_accelerator_candidates(first_only=True)``: per TP, smallest first, nodes best fit first (fewest
    free devices; node order among equals), each taking ``min(free // tp, host memory // need, free CPU // need)``
    replicas; the first ``count`` of them place every replica when their room adds up (one replica per node first,
    so the first node chosen is the candidate's first). At the smallest TP every fitting node has room for one, so
    ``count`` nodes place everything. With fewer, a node's room only shrinks as TP grows (fewer groups of its free
    devices, more CPU per replica, the same host memory): the class places every replica at its smallest TP or
    nowhere, and the shortfall is the largest TP's that has room for some.
    """
    if count == 1 or len(nodes) >= count:
        return bound, min(nodes, key=_FREE_DEVICES).name, ""
    host_need = ev.host_need
    fits = ev.fits
    messages = ev.messages
    shortfall = ""
    for index in range(len(fits)):
        tp = fits[index][0]
        cpu_need = (ACCELERATOR_CPU_BASE_CORES + ACCELERATOR_CPU_CORES_PER_DEVICE * tp) * 1000
        capacity = 0
        for node in nodes:
            free = node.free_devices
            if free >= tp:
                capacity += min(
                    free // tp, node.free_memory_bytes // host_need, node.free_cpu_millicores // cpu_need
                )
        if capacity >= count:  # at the smallest TP only (the first pass)
            return bound, (nodes[0] if len(nodes) == 1 else min(nodes, key=_FREE_DEVICES)).name, ""
        if not (capacity and reasons):
            break
        # Many clusters fall short the same way: one sentence each.
        shortfall = messages.get(("room", tp, capacity))
        if shortfall is None:
            shortfall = messages[("room", tp, capacity)] = (
                f"{ev.device_type} {ev.model_name} at TP {tp}: room for {capacity} of {count} replicas"
            )
    return None, "", shortfall


def _cpu_key(ev, nodes: list[NodeCapacity], count: int, reasons: bool) -> tuple[tuple | None, str, str]:
    """``_accelerator_key`` for a CPU class (``_cpu_candidate``: the ``count`` nodes with the most free memory, one
    replica each, the smallest of them setting the headroom; a shortfall when fewer nodes fit)."""
    if len(nodes) < count:
        if not reasons:
            return None, "", ""
        # The sentence as the candidate search writes it (it depends on the number of nodes only; the next
        # classify_nodes of the class starts its nodes afresh).
        short = ev.messages.get(("replicas", len(nodes)))
        if short is None:
            ev.fit_nodes = nodes
            short = ev.messages[("replicas", len(nodes))] = class_candidates(ev, count)[1]
        return None, "", short
    node = max(nodes, key=_FREE_MEMORY)  # the first of the largest: the candidate's first node
    smallest = node.free_memory_bytes if count == 1 else heapq.nlargest(count, map(_FREE_MEMORY, nodes))[-1]
    return (1, 0, ISA_RANK.get(ev.isa, 9), -((smallest - ev.host_need) / smallest)), node.name, ""


_FREE_DEVICES = attrgetter("free_devices")
_FREE_MEMORY = attrgetter("free_memory_bytes")
_NO_SHORTFALLS: tuple[str, ...] = ()


def _cluster_key(
    nodes: Sequence[NodeCapacity], fleet: _Fleet, *, reasons: bool = False
) -> tuple[tuple | None, str, Sequence[str], dict[str, list[NodeCapacity]]]:
    """A cluster's best candidate without building it: its sort key without the node name (None when nothing
    fits), its first node, the shortfalls (when nothing fits and ``reasons``: a refused cluster's sentence is
    written when read) and the fitting nodes per class.

    Every class's key is its bound followed by a node name, and ``prefix + (name,) <= bound`` exactly when
    ``prefix < bound``; comparing (prefix, name) pairs is comparing the keys.
    """
    fit = _scan(nodes, fleet)
    if not fit:
        return None, "", _NO_SHORTFALLS, fit
    count = fleet.count
    bounds = fleet.bounds
    evaluations = fleet.evaluations
    # Best bound first (the fleet's order of the classes, which the scan has just completed with this cluster's):
    # once the best key found sorts before the next class's bound, no later class can beat it.
    best: tuple | None = None
    best_name = ""
    shortfalls: list[str] = []
    for key in fit if len(fit) == 1 else fleet.order:
        found = fit.get(key)
        if found is None:
            continue
        bound = bounds[key]
        if best is not None and best < bound:
            break
        accelerator, ev = evaluations[key]
        if accelerator:
            prefix, name, short = _accelerator_key(ev, bound, found, count, reasons)
        else:
            prefix, name, short = _cpu_key(ev, found, count, reasons)
        if short:
            shortfalls.append(short)
        if prefix is not None and (best is None or (prefix, name) < (best, best_name)):
            best, best_name = prefix, name
    if best is None and len(shortfalls) > 1 and fleet.tied:
        shortfalls = _shortfalls_in_order(nodes, fit, fleet)
    return best, best_name, shortfalls, fit


def _shortfalls_in_order(nodes: Sequence[NodeCapacity], fit: dict, fleet: _Fleet) -> list[str]:
    """Every class's shortfall, best bound first and, between equal bounds, in the order the classes first appear
    among the cluster's nodes (``classify_nodes``'s order; ``fit`` is in first-fitting-node order)."""
    first_seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if not node.blocked_reason:
            first_seen.setdefault(node.class_key, index)
    shortfalls = []
    for key in sorted(fit, key=lambda key: (fleet.bounds[key], first_seen[key])):
        accelerator, ev = fleet.evaluations[key]
        if accelerator:
            short = _accelerator_key(ev, fleet.bounds[key], fit[key], fleet.count, True)[2]
        else:
            short = _cpu_key(ev, fit[key], fleet.count, True)[2]
        if short:
            shortfalls.append(short)
    return shortfalls


def _cluster_refusal(cluster: ClusterInventory, fleet: _Fleet, refused: int) -> ClusterRefusal:
    """A refused cluster as an answer shows it: why in one sentence (its shortfalls, else why not), and its
    refused nodes (every node that does not fit, in node order, as ``classify_nodes`` lists them)."""
    nodes = cluster.nodes
    _, _, shortfalls, fit = _cluster_key(nodes, fleet, reasons=True)
    if shortfalls:
        reason = "; ".join(shortfalls)
    elif not nodes:
        reason = "the cluster inventory is empty"
    else:
        reason = f"no node can take a replica ({refused} refused)"
    fitting = {id(node) for found in fit.values() for node in found}
    refusals = RefusalList([node for node in nodes if id(node) not in fitting], fleet.reason)
    return ClusterRefusal(cluster.id, cluster.name, cluster.status, reason, refusals)


class _RefusedClusters(Sequence[ClusterRefusal]):
    """The refused clusters by name, each built when first read (an answer shows the first 200 of possibly
    thousands) from the plan's class cache and the cluster's rows, which do not change under a plan. Rows are
    ``(name, index, refused nodes or -1 when not planned on, cluster)``."""

    __slots__ = ("_built", "_fleet", "_rows")

    def __init__(self, rows: list[tuple], fleet: _Fleet) -> None:
        self._rows = rows
        self._fleet = fleet
        self._built: list[ClusterRefusal | None] = [None] * len(rows)

    def _get(self, index: int) -> ClusterRefusal:
        refusal = self._built[index]
        if refusal is None:
            _, _, count, cluster = self._rows[index]
            if count < 0:  # not planned on
                refusal = ClusterRefusal(cluster.id, cluster.name, cluster.status, cluster.unavailable)
            else:
                refusal = _cluster_refusal(cluster, self._fleet, count)
            self._built[index] = refusal
        return refusal

    @property
    def node_refusals_total(self) -> int:
        return sum(max(row[2], 0) for row in self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ClusterRefusal]:
        return map(self._get, range(len(self._rows)))

    @overload
    def __getitem__(self, index: int) -> ClusterRefusal: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[ClusterRefusal, ...]: ...
    def __getitem__(self, index: int | slice) -> ClusterRefusal | tuple[ClusterRefusal, ...]:
        if isinstance(index, slice):
            return tuple(map(self._get, range(*index.indices(len(self._rows)))))
        return self._get(range(len(self._rows))[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RefusedClusters({len(self._rows)} clusters)"


def _cluster_best(cluster: ClusterInventory, fleet: _Fleet) -> Candidate:
    """The best candidate of a cluster known to have one: the single-cluster search, stopped early the same way."""
    count = fleet.count
    _, used = classify_nodes(cluster.nodes, fleet.plan, fleet.classes)
    options = [ev for ev in used.values() if not ev.refusal and (ev.by_free or ev.fit_nodes)]
    if len(options) > 1:
        options.sort(key=lambda ev: class_bound(ev, count))
    best: Candidate | None = None
    best_key: tuple = ()
    for ev in options:
        if best_key and best_key <= class_bound(ev, count):
            break
        for candidate in class_candidates(ev, count, first_only=True)[0]:
            key = candidate.sort_key()
            if not best_key or key < best_key:
                best, best_key = candidate, key
    assert best is not None, cluster.name
    return best


def plan_fleet(
    model: str | Mapping | ModelSpec,
    *,
    clusters: Sequence[ClusterInventory],
    dtype: str | None = "auto",
    quantization: str | None = None,
    context_len: int,
    concurrency: int,
    device_type: str = "auto",
    replicas: int = 1,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_tp: int | None = None,
    limit: int | None = MAX_CANDIDATES,
) -> FleetPlacement:
    """Every cluster's best placement, ranked, and the refused clusters with their reasons.

    Arguments are those of ``plan_placement`` (ValueError for invalid ones), with ``clusters`` in place of
    ``nodes``; ``limit`` caps the candidates kept (``candidates_total`` counts every cluster that fits; None keeps
    all). Nothing fitting anywhere is not an error here: ``feasible`` is False and ``refused`` says why.
    """
    plan = prepare_plan(
        model,
        dtype=dtype,
        quantization=quantization,
        context_len=context_len,
        concurrency=concurrency,
        device_type=device_type,
        replicas=replicas,
        gpu_memory_utilization=gpu_memory_utilization,
        max_tp=max_tp,
    )
    fleet = _Fleet(plan, plan.replicas)
    fleet.reason = refusal_reason(fleet.classes, plan)
    # Plain tuples, not objects, per cluster (a plan over thousands of clusters allocates little and leaves the
    # garbage collector alone). Ranked: (sort key without the node name, cluster name, node name, index): the
    # candidate's own order, then the cluster's name, then the node's (identical clusters rank by name, not by what
    # their nodes happen to be called), then the fleet's order. Refused: see _RefusedClusters.
    ranked: list[tuple[tuple, str, str, int]] = []
    refused: list[tuple[str, int, int, ClusterInventory]] = []
    planned = 0
    for index, cluster in enumerate(clusters):
        if cluster.unavailable:
            refused.append((cluster.name, index, -1, cluster))
            continue
        planned += 1
        # Only the ranking key is computed for every cluster; the candidate is built for the clusters shown
        # (``limit``), by searching their few nodes again.
        nodes = cluster.nodes
        prefix, node_name, _, fit = _cluster_key(nodes, fleet)
        if prefix is not None:
            ranked.append((prefix, cluster.name, node_name, index))
            continue
        refused_count = len(nodes) - sum(map(len, fit.values())) if fit else len(nodes)
        refused.append((cluster.name, index, refused_count, cluster))
    # sorted(ranked)[:limit], without sorting them all when only the first few are kept
    few = limit is not None and 0 <= limit < len(ranked)
    shown = heapq.nsmallest(limit, ranked) if few else sorted(ranked)[:limit]
    estimates: dict[tuple[str, int], MemoryEstimate] = {}
    candidates = []
    for *_, index in shown:
        cluster = clusters[index]
        candidate = _cluster_best(cluster, fleet)
        layout = (candidate.device_type, candidate.tensor_parallel_size)
        estimate = estimates.get(layout)
        if estimate is None:
            estimate = estimates[layout] = plan_estimate(plan, *layout)
        candidates.append(FleetCandidate(cluster.id, cluster.name, candidate, estimate))
    if candidates:
        estimate = candidates[0].estimate
    else:
        estimate = plan_estimate(plan, "cuda" if plan.requested == "auto" else plan.requested, 1)
    summary = no_fit_summary(plan)
    if not candidates:
        summary += (
            f" on any of {len(clusters)} clusters ({planned} available)"
            if clusters
            else ": no cluster is registered"
        )
    refused.sort()  # by name, then the fleet's order (indexes are unique: the clusters are never compared)
    return FleetPlacement(
        model=plan.model,
        summary=summary,
        clusters_total=len(clusters),
        clusters_planned=planned,
        estimate=estimate,
        candidates=tuple(candidates),
        candidates_total=len(ranked),
        refused=_RefusedClusters(refused, fleet),
    )
