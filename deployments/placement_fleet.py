"""Where a model can run across every cluster: one best candidate per cluster, ranked, and why the others refuse.

Pure and fast like ``deployments/placement.py``, whose steps it reuses (no Django, no I/O): the caller maps the
stored inventory of all clusters to ``ClusterInventory`` rows (two queries, whatever the number of clusters).

Design
------
* The request is checked and its node-independent figures computed once (``prepare_plan``), and every node class
  (same device, product, memory; same CPU ISA) is evaluated once for the whole fleet: the class cache is shared by
  all clusters, only the buckets of free nodes are per cluster.
* Each cluster contributes at most one candidate, its best (the single-cluster order: accelerators before CPU, then
  fewest devices, then most headroom). Classes are tried best bound first and the search stops as soon as the
  best found beats the next class's bound, so a cluster usually costs one candidate search.
* Clusters are ranked by their best candidate's sort key, then by cluster name (deterministic ties). A deploy that
  names no cluster takes the first.
* A cluster is refused as a whole with one sentence: not available (status and reason; it is not planned on,
  since a deploy there would be refused), inventory empty, too little room for all replicas (the shortfalls), or no
  node can take a replica; its per-node refusals are written only when read, like the single-cluster plan's.

Speed: 2,000 clusters of 10 nodes plan in a few tens of milliseconds (see benchmarks/placement.py, fleet case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deployments.catalog import ModelSpec

from .placement import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    ISA_RANK,
    Candidate,
    MemoryEstimate,
    NodeCapacity,
    Refusal,
    class_bound,
    class_candidates,
    classify_nodes,
    no_fit_summary,
    node_refusals,
    plan_estimate,
    prepare_plan,
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
    refused: tuple[ClusterRefusal, ...] = field(default=())

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


def _quick_key(ev, count: int) -> tuple | None:
    """The sort key of a class's best one-replica candidate, without building it; None when it must be built.

    One replica: every node in an accelerator bucket takes the smallest fitting TP (the buckets hold only nodes
    that pass its thresholds), and best fit takes the first node of the fewest-free bucket; on CPU the node with the
    most free memory. The key is then ``Candidate.sort_key`` of what ``class_candidates`` would build.
    """
    if count != 1:
        return None
    if ev.is_cpu:
        node = max(ev.fit_nodes, key=_free_memory)
        free = node.free_memory_bytes
        return (1, 0, ISA_RANK.get(ev.isa, 9), -((free - ev.host_need) / free), node.name)
    return (*class_bound(ev, count), ev.by_free[min(ev.by_free)][0].name)


def _free_memory(node: NodeCapacity) -> int:
    return node.free_memory_bytes


def _cluster_best(
    cluster: ClusterInventory, plan, classes: dict, *, quick: bool
) -> tuple[tuple, Candidate | None, list[str], list[NodeCapacity]]:
    """A cluster's best candidate (or only its key, ``quick``), its shortfalls and its refused nodes."""
    count = plan.replicas
    refused_nodes, used = classify_nodes(cluster.nodes, plan, classes)
    best: Candidate | None = None
    best_key: tuple = ()
    shortfalls: list[str] = []
    # Best bound first: once the best key found sorts before the next class's bound, no later class can beat
    # it. Classes without a fitting node have no candidate and no shortfall.
    options = [ev for ev in used.values() if not ev.refusal and (ev.by_free or ev.fit_nodes)]
    if len(options) > 1:
        options.sort(key=lambda ev: class_bound(ev, count))
    for ev in options:
        if best_key and best_key <= class_bound(ev, count):
            break
        key = _quick_key(ev, count) if quick else None
        if key is not None:
            if not best_key or key < best_key:
                best_key = key
            continue
        found, short = class_candidates(ev, count, first_only=True)
        if short:
            shortfalls.append(short)
        for candidate in found:
            key = candidate.sort_key()
            if not best_key or key < best_key:
                best, best_key = candidate, key
    return best_key, best, shortfalls, refused_nodes


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
    count = plan.replicas
    classes: dict = {}  # class key → evaluation, shared by every cluster
    ranked: list[tuple[tuple, str, ClusterInventory, Candidate | None]] = []
    refused: list[ClusterRefusal] = []
    planned = 0
    for cluster in clusters:
        if cluster.unavailable:
            refused.append(ClusterRefusal(cluster.id, cluster.name, cluster.status, cluster.unavailable))
            continue
        planned += 1
        # One replica (the common case): only the ranking key is computed here; the candidate is built for the
        # clusters shown (``limit``), by planning their few nodes again.
        best_key, best, shortfalls, refused_nodes = _cluster_best(cluster, plan, classes, quick=count == 1)
        if best_key:
            ranked.append((best_key, cluster.name, cluster, best))
            continue
        if shortfalls:
            reason = "; ".join(shortfalls)
        elif not cluster.nodes:
            reason = "the cluster inventory is empty"
        else:
            reason = f"no node can take a replica ({len(refused_nodes)} refused)"
        refused.append(
            ClusterRefusal(
                cluster.id, cluster.name, cluster.status, reason, node_refusals(refused_nodes, classes, plan)
            )
        )
    # The candidate's own order without its node name, then the cluster's name, then the node's: identical
    # clusters rank by name, not by what their nodes happen to be called.
    ranked.sort(key=lambda item: (item[0][:-1], item[1], item[0][-1]))
    estimates: dict[tuple[str, int], MemoryEstimate] = {}
    candidates = []
    for _, _, cluster, candidate in ranked if limit is None else ranked[:limit]:
        if candidate is None:
            _, candidate, _, _ = _cluster_best(cluster, plan, classes, quick=False)
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
    return FleetPlacement(
        model=plan.model,
        summary=summary,
        clusters_total=len(clusters),
        clusters_planned=planned,
        estimate=estimate,
        candidates=tuple(candidates),
        candidates_total=len(ranked),
        refused=tuple(sorted(refused, key=lambda r: r.cluster_name)),
    )
