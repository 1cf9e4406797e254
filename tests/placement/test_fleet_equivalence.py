"""The fleet planner's shortcuts give exactly the answer of planning every cluster alone.

``plan_fleet`` ranks thousands of clusters without building their candidates (sort keys from class bounds and
node figures, classes tried best bound first, refused clusters' node lists built when read). Here a plain
reference computes the same answer the slow way: every cluster planned alone with ``plan_placement`` (every class,
every TP, every candidate built and sorted), its refusal reason from a full search of every class, the clusters
sorted by the documented order. Seeded random fleets of varied clusters (empty, unavailable, blocked nodes, busy
GPUs, several CPU generations, devices of unknown memory, identical clusters under other names) are compared
answer for answer, for one and several replicas, refusals and ties.
"""

from __future__ import annotations

import random

import pytest

from benchmarks.placement import REQUESTS as BENCHMARK_REQUESTS
from benchmarks.placement import build_fleet, build_inventory
from deployments.placement import (
    GIB,
    NodeCapacity,
    PlacementError,
    class_bound,
    class_candidates,
    classify_nodes,
    no_fit_summary,
    plan_estimate,
    plan_placement,
    prepare_plan,
)
from deployments.placement_fleet import ClusterInventory, plan_fleet

AMX = frozenset({"AVX2", "AVX512F", "AMXBF16"})
AVX512 = frozenset({"AVX2", "AVX512F"})
AVX2 = frozenset({"AVX2"})
OLD = frozenset({"SSE4_2"})

# (accelerator_type, product, devices, memory MiB (0: from the product table, unknown products refuse))
GPUS = (
    ("cuda", "NVIDIA-H100-80GB-HBM3", 8, 81_559),
    ("cuda", "NVIDIA-A100-SXM4-40GB", 8, 40_960),
    ("cuda", "NVIDIA-L4", 1, 23_034),
    ("cuda", "NVIDIA-L4", 4, 23_034),
    ("rocm", "AMD-Instinct-MI300X", 8, 196_608),
    ("hpu", "HL-225 Gaudi2", 8, 0),
    ("cuda", "NVIDIA-Mystery-GPU", 2, 0),
)

REQUESTS = {
    "8B, 1 replica": dict(model="llama-3.1-8b-instruct", context_len=4096, concurrency=16),
    "8B, 3 replicas": dict(model="llama-3.1-8b-instruct", context_len=8192, concurrency=16, replicas=3),
    "8B cuda, 6 replicas": dict(
        model="llama-3.1-8b-instruct", context_len=8192, concurrency=16, device_type="cuda", replicas=6
    ),
    "70B bf16, 2 replicas": dict(
        model="llama-3.1-70b-instruct", context_len=8192, concurrency=32, replicas=2
    ),
    "70B bf16, 4 replicas, max TP 4": dict(
        model="llama-3.1-70b-instruct", context_len=8192, concurrency=32, replicas=4, max_tp=4
    ),
    "405B fp8": dict(model="llama-3.1-405b", quantization="fp8", context_len=8192, concurrency=8),
    "8B cpu, 2 replicas": dict(
        model="llama-3.1-8b", context_len=4096, concurrency=4, device_type="cpu", replicas=2
    ),
    "bge, utilization 0.5": dict(
        model="bge-large-en-v1.5", context_len=512, concurrency=64, gpu_memory_utilization=0.5
    ),
    "405B fp32 (refused everywhere)": dict(
        model="llama-3.1-405b", dtype="float32", context_len=32768, concurrency=16
    ),
}


def _node(rng: random.Random, name: str) -> NodeCapacity:
    ready = rng.random() > 0.05
    cordoned = rng.random() < 0.05
    taints = ("node.kubernetes.io/unschedulable:NoSchedule",) if cordoned else ()
    if rng.random() < 0.55:
        kind, product, devices, memory_mib = rng.choice(GPUS)
        cores = rng.choice((16, 48, 96))
        host_gib = rng.choice((64, 256, 1024, 2048))
        free = rng.choice((0, devices, rng.randint(0, devices)))
        return NodeCapacity(
            name=name, ready=ready, schedulable=not cordoned, taints=taints, accelerator_type=kind,
            accelerator_model=product, device_count=devices, free_devices=free,
            device_memory_mib=memory_mib, cpu_cores=cores, free_cpu_millicores=rng.randint(2, 2 * cores) * 1000,
            memory_bytes=host_gib * GIB, free_memory_bytes=rng.randint(host_gib // 16, host_gib) * GIB, cpu_flags=AMX,
        )  # fmt: skip
    cores, host_gib = rng.choice(((8, 64), (32, 128), (64, 512)))
    return NodeCapacity(
        name=name, ready=ready, schedulable=not cordoned, taints=taints, accelerator_type="cpu", cpu_cores=cores,
        free_cpu_millicores=rng.randint(1, 2 * cores) * 1000, memory_bytes=host_gib * GIB,
        free_memory_bytes=rng.randint(2, host_gib) * GIB, cpu_flags=rng.choice((AMX, AVX512, AVX2, OLD)),
    )  # fmt: skip


def random_fleet(seed: int, clusters: int = 160) -> list[ClusterInventory]:
    """Clusters of 0 to 12 nodes; some unavailable; some copies of an earlier cluster with their nodes renamed,
    under another name or the same (equal candidates: the ranking falls back on the cluster name, then the node
    name, then the fleet's order)."""
    rng = random.Random(seed)
    fleet: list[ClusterInventory] = []
    names = [f"c{i:03d}" for i in range(clusters)]
    rng.shuffle(names)  # the fleet's order is not the name order
    for i, name in enumerate(names):
        if fleet and rng.random() < 0.2:
            source = rng.choice(fleet)
            nodes = [NodeCapacity(**{**_fields(n), "name": _node_name(rng)}) for n in source.nodes]
            if rng.random() < 0.3:
                name = source.name  # the same name too: the node names decide
        else:
            nodes = [_node(rng, _node_name(rng)) for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 10, 12)))]
        down = rng.random() < 0.05
        fleet.append(
            ClusterInventory(
                id=i + 1,
                name=name,
                nodes=nodes,
                status="not_available" if down else "available",
                unavailable=f"cluster is not_available: API server of {name} not answering" if down else "",
            )
        )
    return fleet


def _node_name(rng: random.Random) -> str:
    # Random, so that which node a candidate starts on (its best fit) decides between equal clusters.
    return f"node-{rng.randrange(10**6):06d}"


def _fields(node: NodeCapacity) -> dict:
    names = (
        "name", "ready", "schedulable", "accelerator_type", "accelerator_vendor", "accelerator_model",
        "device_count", "free_devices", "device_memory_mib", "cpu_cores", "free_cpu_millicores", "memory_bytes",
        "free_memory_bytes", "cpu_flags", "labels", "taints",
    )  # fmt: skip
    return {name: getattr(node, name) for name in names}


def reference(model: str, clusters: list[ClusterInventory], limit: int | None, **request) -> dict:
    """The fleet answer computed the plain way (see the module docstring), in ``FleetPlacement``'s terms."""
    plan = prepare_plan(model, **request)
    count = plan.replicas
    ranked = []
    refused = []
    for cluster in clusters:
        if cluster.unavailable:
            refused.append((cluster, cluster.unavailable, []))
            continue
        try:
            result = plan_placement(model, nodes=cluster.nodes, **request)
        except PlacementError as error:
            # Every class searched in full (every TP), best class first, then in the order the classes first
            # appear among the cluster's nodes.
            _, used = classify_nodes(cluster.nodes, plan, {})
            shortfalls = [class_candidates(ev, count)[1] for ev in used.values()]
            bounds = [class_bound(ev, count) for ev in used.values()]
            order = sorted(range(len(shortfalls)), key=lambda i: bounds[i])
            shortfalls = [shortfalls[i] for i in order if shortfalls[i]]
            if shortfalls:
                reason = "; ".join(shortfalls)
            elif not cluster.nodes:
                reason = "the cluster inventory is empty"
            else:
                reason = f"no node can take a replica ({len(error.refusals)} refused)"
            refused.append((cluster, reason, [str(r) for r in error.refusals]))
            continue
        ranked.append((cluster, result.best, result.estimate))
    ranked.sort(key=lambda item: (item[1].sort_key()[:-1], item[0].name, item[1].sort_key()[-1]))
    refused.sort(key=lambda item: item[0].name)
    shown = ranked if limit is None else ranked[:limit]
    fallback = ("cuda" if plan.requested == "auto" else plan.requested, 1)  # the layout shown when none fits
    estimate = shown[0][2] if shown else plan_estimate(plan, *fallback)
    summary = no_fit_summary(plan)
    planned = sum(1 for c in clusters if not c.unavailable)
    if not shown:
        summary += (
            f" on any of {len(clusters)} clusters ({planned} available)"
            if clusters
            else ": no cluster is registered"
        )
    node_reasons = [f"{c.name}/{reason}" for c, _, reasons in refused for reason in reasons]
    return {
        "summary": summary,
        "estimate": estimate.as_dict(),
        "answer": {
            "clusters_total": len(clusters),
            "clusters_planned": planned,
            "candidates": [
                {
                    "rank": rank,
                    "cluster": c.id,
                    "cluster_name": c.name,
                    **best.as_dict(),
                    "memory": est.as_dict(),
                }
                for rank, (c, best, est) in enumerate(shown, start=1)
            ],
            "candidates_total": len(ranked),
            "refused_clusters": [
                {
                    "cluster": c.id,
                    "cluster_name": c.name,
                    "status": c.status,
                    "reason": reason,
                    "refusals": reasons,
                    "refusals_total": len(reasons),
                }
                for c, reason, reasons in refused
            ],
            "refused_clusters_total": len(refused),
        },
        "node_refusals": node_reasons[:200],
        "node_refusals_total": len(node_reasons),
    }


def fleet_answer(model: str, clusters: list[ClusterInventory], limit: int | None, **request) -> dict:
    result = plan_fleet(model, clusters=clusters, limit=limit, **request)
    return {
        "summary": result.summary,
        "estimate": result.estimate.as_dict(),
        "answer": result.as_dict(max_candidates=None, max_refused=None, max_node_refusals=None),
        "node_refusals": result.node_refusals(200),
        "node_refusals_total": result.node_refusals_total,
    }


@pytest.mark.parametrize("label", list(REQUESTS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fleet_plan_is_every_cluster_planned_alone(label, seed):
    request = dict(REQUESTS[label])
    model = request.pop("model")
    clusters = random_fleet(seed)
    for limit in (None, 20, 3, 0):
        expected = reference(model, clusters, limit, **request)
        assert fleet_answer(model, clusters, limit, **request) == expected, (label, seed, limit)


@pytest.mark.parametrize("label", [label for label, _ in BENCHMARK_REQUESTS])
def test_the_benchmark_fleet_plan_is_every_cluster_planned_alone(label):
    # The benchmark's realistic mix (a tenth of it), with its requests: 20,000 replicas, refusals everywhere.
    request = dict(dict(BENCHMARK_REQUESTS)[label])
    model = request.pop("model")
    clusters = build_fleet(build_inventory(3000, seed=5), 300, seed=5)
    for limit in (None, 20):
        expected = reference(model, clusters, limit, **request)
        assert fleet_answer(model, clusters, limit, **request) == expected, (label, limit)


def test_the_random_fleets_hold_the_cases_the_shortcuts_must_get_right():
    # The comparison above proves little unless the fleets hold each case a shortcut could get wrong.
    def answers(label: str) -> list[dict]:
        request = dict(REQUESTS[label])
        model = request.pop("model")
        return [reference(model, random_fleet(seed), None, **request)["answer"] for seed in (1, 2, 3)]

    several = answers("8B, 3 replicas") + answers("70B bf16, 2 replicas") + answers("8B cpu, 2 replicas")
    candidates = [c for answer in several for c in answer["candidates"]]
    reasons = [r["reason"] for answer in several for r in answer["refused_clusters"]]
    # Replicas sharing a node (a node with room for several) and spread over distinct nodes.
    assert any(len(c["nodes"]) < c["replicas"] for c in candidates)
    assert any(len(c["nodes"]) == c["replicas"] > 1 for c in candidates)
    # Tensor parallelism (the model needs more than one device's memory) with several replicas.
    assert any(c["tensor_parallel_size"] > 1 and c["replicas"] > 1 for c in candidates)
    # Shortfalls of GPU classes and CPU classes, and several in one reason.
    assert any("room for" in r for r in reasons) and any(
        "replicas requested (one per CPU node)" in r for r in reasons
    )
    assert any(r.count(";") >= 1 for r in reasons)
    assert any(r.startswith("no node can take a replica") for r in reasons)
    assert "the cluster inventory is empty" in reasons
    # Equal candidates on clusters of other names and of the same name (the copies).
    one = answers("8B, 1 replica")[0]["candidates"]
    keys = [(c["summary"].split(" on ")[0], c["headroom"]) for c in one]
    assert len(keys) > len(set(keys))
    named = [(key, c["cluster_name"]) for key, c in zip(keys, one, strict=True)]
    assert len(named) > len(set(named))


def test_equal_clusters_of_one_name_rank_by_the_node_their_candidate_starts_on():
    # Same name, same figures: the node decides, and it is the best fit (fewest free GPUs), not the first listed.
    def node(name: str, free: int) -> NodeCapacity:
        return NodeCapacity(
            name=name, accelerator_type="cuda", accelerator_model="NVIDIA-H100-80GB-HBM3", device_count=8,
            free_devices=free, device_memory_mib=81_559, cpu_cores=96, free_cpu_millicores=190_000,
            memory_bytes=2048 * GIB, free_memory_bytes=2048 * GIB,
        )  # fmt: skip

    clusters = [
        ClusterInventory(1, "dup", nodes=[node("n-b", 8), node("n-c", 2)]),
        ClusterInventory(2, "dup", nodes=[node("n-d", 8), node("n-a", 2)]),
        ClusterInventory(3, "dup", nodes=[node("n-e", 8), node("n-a", 2)]),  # all equal: the fleet's order
    ]
    for replicas in (1, 2):
        request = dict(context_len=4096, concurrency=16, replicas=replicas)
        result = fleet_answer("llama-3.1-8b-instruct", clusters, None, **request)
        assert result == reference("llama-3.1-8b-instruct", clusters, None, **request)
        ranked = [(c["cluster"], c["node"]) for c in result["answer"]["candidates"]]
        assert ranked == [(2, "n-a"), (3, "n-a"), (1, "n-c")]


def test_equal_class_bounds_list_shortfalls_in_the_order_the_classes_appear():
    # Two classes rank the same only for devices of ~100 EiB (their headroom rounds to the same float); the fleet
    # plan then lists their shortfalls as the single-cluster order does: as the classes first appear.
    def node(name: str, memory_mib: int, free: int) -> NodeCapacity:
        return NodeCapacity(
            name=name, accelerator_type="cuda", accelerator_model="NVIDIA-Huge", device_count=8, free_devices=free,
            device_memory_mib=memory_mib, cpu_cores=96, free_cpu_millicores=190_000, memory_bytes=2048 * GIB,
            free_memory_bytes=2048 * GIB,
        )  # fmt: skip

    big = 100_000_000_000
    request = dict(context_len=4096, concurrency=16, replicas=3)
    plan = prepare_plan("llama-3.1-8b-instruct", **request)
    _, used = classify_nodes([node("x", big, 1), node("y", big + 1, 2)], plan, {})
    first, second = used.values()
    assert class_bound(first, 3) == class_bound(second, 3)  # the premise: a tie

    for order in (("x", "y"), ("y", "x")):
        nodes = {"x": node("x", big, 1), "y": node("y", big + 1, 2)}
        clusters = [
            ClusterInventory(1, "tied", nodes=[nodes[name] for name in order]),
            ClusterInventory(2, "other", nodes=[node("o", 81_559, 1)]),  # no tie within this one
        ]
        result = fleet_answer("llama-3.1-8b-instruct", clusters, None, **request)
        assert result == reference("llama-3.1-8b-instruct", clusters, None, **request)
        [tied] = [r for r in result["answer"]["refused_clusters"] if r["cluster_name"] == "tied"]
        sentences = {"x": "at TP 1: room for 1 of 3 replicas", "y": "at TP 2: room for 1 of 3 replicas"}
        assert tied["reason"].index(sentences[order[0]]) < tied["reason"].index(sentences[order[1]])


def test_a_row_that_is_not_a_node_is_refused_with_a_clear_error():
    clusters = [ClusterInventory(1, "c", nodes=[{"name": "n0"}])]
    with pytest.raises(ValueError, match="nodes must contain NodeCapacity rows, got dict"):
        plan_fleet("llama-3.1-8b-instruct", clusters=clusters, context_len=4096, concurrency=16)
