"""Fleet-wide placement: a plan or a deploy that names no cluster is planned on every available cluster.

The fleet is stored as an operator's would be (Cluster and Node rows): an H100 cluster, an A100 40 GB cluster, an L4
cluster (the 8B model needs TP 2 there), a CPU-only cluster, one whose GPUs are all taken, one with no inventory and
one that is not available. The answers are checked as a client reads them, and against the OpenAPI schema. The
last test deploys through the fleet on the devcluster with a real worker.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from benchmarks.placement import REQUESTS, build_fleet, build_inventory
from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from deployments import services
from deployments.models import Deployment
from deployments.placement import GIB, NodeCapacity, PlacementError, plan_placement
from deployments.placement_fleet import ClusterInventory, plan_fleet
from hardware.models import Node
from tests.api.conftest import _broker_at
from tests.deployments.conftest import (  # noqa: F401  (fixtures of the devcluster deploy test)
    _store_cluster,
    finished,
    gpu,
    gpu_baseline,
    gpu_reset,
)

pytestmark = pytest.mark.django_db

LLAMA_8B = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 16}
H100 = ("NVIDIA-H100-80GB-HBM3", 81_559)
A100_40 = ("NVIDIA-A100-SXM4-40GB", 40_960)
L4 = ("NVIDIA-L4", 23_034)
AMX = ["AVX2", "AVX512F", "AMX_BF16"]


def _cluster(name: str, status: str = "available", reason: str = "") -> Cluster:
    return Cluster.objects.create(
        name=name, server_url=f"https://{name}.example.test:6443", status=status, reason=reason
    )


def _gpu_node(
    cluster: Cluster, name: str, product: tuple[str, int], *, count: int = 8, free: int = 8
) -> Node:
    return Node.objects.create(
        cluster=cluster, name=name, ready=True, schedulable=True, accelerator_type="cuda",
        accelerator_vendor="NVIDIA", accelerator_model=product[0], accelerator_resource="nvidia.com/gpu",
        accelerator_count=count, accelerator_memory_mib=product[1], free_accelerators=free, cpu_cores=96,
        free_cpu_millicores=90_000, memory_bytes=1024 * GIB, free_memory_bytes=1000 * GIB, cpu_flags=AMX,
    )  # fmt: skip


def _cpu_node(cluster: Cluster, name: str) -> Node:
    return Node.objects.create(
        cluster=cluster, name=name, ready=True, schedulable=True, accelerator_type="cpu", cpu_cores=64,
        free_cpu_millicores=120_000, memory_bytes=512 * GIB, free_memory_bytes=500 * GIB, cpu_flags=AMX,
    )  # fmt: skip


@pytest.fixture
def fleet() -> dict[str, Cluster]:
    clusters = {}
    # Created out of rank order, so the ranking cannot come from creation or name order.
    clusters["l4"] = _cluster("l4-east")
    _gpu_node(clusters["l4"], "l4-0", L4, count=4, free=4)
    clusters["cpu"] = _cluster("cpu-only")
    _cpu_node(clusters["cpu"], "cpu-0")
    clusters["a100"] = _cluster("a100-40")
    _gpu_node(clusters["a100"], "a100-0", A100_40)
    clusters["h100"] = _cluster("h100-west")
    _gpu_node(clusters["h100"], "h100-0", H100)
    _gpu_node(clusters["h100"], "h100-1", H100, free=0)
    clusters["full"] = _cluster("full")
    _gpu_node(clusters["full"], "full-0", H100, free=0)
    clusters["empty"] = _cluster("empty")
    clusters["down"] = _cluster("down", status="not_available", reason="API server not answering")
    _gpu_node(clusters["down"], "down-0", H100)  # the best hardware, but a deploy there would be refused
    return clusters


def _plan(api, **body):
    return api.post("/deployments/plan", {**LLAMA_8B, **body}, format="json")


def _validate(api, settings, body: dict, path: str = "/deployments/plan"):
    """Send ``body`` through schemathesis and check the answer against the operation's schema."""
    import schemathesis

    from budcluster_site.wsgi import application

    settings.API_THROTTLE_USER_RATE = ""
    token = {"Authorization": api._credentials["HTTP_AUTHORIZATION"]}
    schema = schemathesis.openapi.from_wsgi("/schema", application, headers=token)
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call(headers=token)
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        headers=token,
    )
    return response


def test_fleet_plan_ranks_each_cluster_by_its_best_placement(api, fleet):
    response = _plan(api)
    assert response.status_code == 200, response.json()
    answer = response.json()
    ranked = answer["fleet"]["candidates"]
    # GPUs before CPU; fewest devices (the L4 needs TP 2); then the most memory headroom (80 GB over 40 GB).
    assert [c["cluster_name"] for c in ranked] == ["h100-west", "a100-40", "l4-east", "cpu-only"]
    assert [c["rank"] for c in ranked] == [1, 2, 3, 4]
    assert [(c["device_type"], c["tensor_parallel_size"]) for c in ranked] == [
        ("cuda", 1),
        ("cuda", 1),
        ("cuda", 2),
        ("cpu", 1),
    ]
    # The node with free GPUs, not the full one; the memory breakdown of each layout.
    assert ranked[0]["node"] == "h100-0" and ranked[0]["cluster"] == fleet["h100"].pk
    assert ranked[2]["memory"]["tensor_parallel_size"] == 2
    assert ranked[2]["memory"]["per_device_bytes"] < ranked[0]["memory"]["per_device_bytes"]
    assert 14 < ranked[0]["memory"]["weights_gib"] < 16  # 8 B parameters in bfloat16
    assert ranked[0]["headroom"] > ranked[1]["headroom"]
    assert answer["fleet"]["candidates_total"] == 4
    assert answer["fleet"]["clusters_total"] == 7 and answer["fleet"]["clusters_planned"] == 6

    # The best cluster is planned in full, exactly as a plan naming it answers.
    assert (answer["cluster"], answer["cluster_name"]) == (fleet["h100"].pk, "h100-west")
    single = _plan(api, cluster="h100-west").json()
    assert "fleet" not in single and "cluster" not in single
    assert set(single) <= set(answer)
    for key in ("placement", "alternatives", "memory", "refusals", "values", "estimated_total_seconds"):
        assert answer[key] == single[key], key
    assert answer["manifests"].keys() == single["manifests"].keys()


def test_fleet_plan_says_why_each_other_cluster_refuses(api, fleet):
    answer = _plan(api).json()["fleet"]
    refused = {r["cluster_name"]: r for r in answer["refused_clusters"]}
    assert sorted(refused) == ["down", "empty", "full"] and answer["refused_clusters_total"] == 3
    assert refused["down"]["status"] == "not_available"
    assert refused["down"]["reason"] == "cluster is not_available: API server not answering"
    assert refused["down"]["refusals"] == []  # not planned on: its stored inventory is not trusted
    assert refused["empty"]["reason"] == "the cluster inventory is empty"
    assert refused["full"]["reason"].startswith("no node can take a replica")
    assert refused["full"]["refusals"] == ["full-0: 0 free GPUs, needs 1"]
    assert refused["full"]["refusals_total"] == 1


def test_a_cluster_with_room_for_some_replicas_names_the_shortfall():
    def node(name: str, free: int) -> NodeCapacity:
        return NodeCapacity(
            name=name, accelerator_type="cuda", accelerator_model=H100[0], device_count=8, free_devices=free,
            device_memory_mib=H100[1], cpu_cores=96, free_cpu_millicores=190_000, memory_bytes=2048 * GIB,
            free_memory_bytes=2048 * GIB,
        )  # fmt: skip

    clusters = [
        ClusterInventory(1, "small", nodes=[node("s-0", 1)]),
        ClusterInventory(2, "large", nodes=[node("l-0", 1), node("l-1", 8)]),
    ]
    result = plan_fleet(
        "llama-3.1-8b-instruct", clusters=clusters, context_len=4096, concurrency=16, replicas=2
    )
    assert [c.cluster_name for c in result.candidates] == ["large"]
    assert result.candidates[0].candidate.replica_nodes == ("l-0", "l-1")  # one replica per node first
    [small] = result.refused
    assert small.reason == "cuda NVIDIA-H100-80GB-HBM3 at TP 1: room for 1 of 2 replicas"


@pytest.mark.parametrize("label", [label for label, _ in REQUESTS])
def test_each_clusters_fleet_candidate_is_its_single_cluster_best(label):
    # The fleet planner shares class evaluations across clusters and stops early per cluster; on a realistic
    # mixed fleet (the benchmark's), every cluster must still get exactly what planning it alone gives.
    request = dict(dict(REQUESTS)[label])
    model = request.pop("model")
    fleet = build_fleet(build_inventory(3000, seed=11), 300, seed=11)
    result = plan_fleet(model, clusters=fleet, limit=None, **request)
    assert len(result.candidates) == result.candidates_total
    chosen = {c.cluster_name: c.candidate for c in result.candidates}
    for cluster in fleet:
        if cluster.unavailable:
            continue
        try:
            best = plan_placement(model, nodes=cluster.nodes, **request).best
        except PlacementError:
            assert cluster.name not in chosen, cluster.name
            continue
        assert chosen[cluster.name] == best, cluster.name
    keys = [(c.candidate.sort_key()[:-1], c.cluster_name) for c in result.candidates]
    assert keys == sorted(keys)


@pytest.mark.django_db(transaction=True)  # schemathesis calls the WSGI application, which closes connections
def test_fleet_plan_answers_as_the_schema_says(api, fleet, settings):
    fits = _validate(api, settings, {**LLAMA_8B})
    assert fits.status_code == 200 and fits.json()["fleet"]["candidates"]
    nowhere = _validate(api, settings, {"model": "llama-3.1-405b", "dtype": "float32", "context_len": 32768})
    assert nowhere.status_code == 422 and nowhere.json()["code"] == "no_fit"


def test_nothing_fits_anywhere_is_a_422_with_each_clusters_reason(api, fleet):
    response = _plan(api, model="llama-3.1-405b", dtype="float32", context_len=32768)
    assert response.status_code == 422
    answer = response.json()
    assert answer["code"] == "no_fit" and answer["feasible"] is False
    assert answer["detail"].startswith("no placement for llama-3.1-405b")
    assert "on any of 7 clusters (6 available)" in answer["detail"]
    assert answer["fleet"]["candidates"] == [] and answer["fleet"]["refused_clusters_total"] == 7
    # Node reasons name their cluster.
    assert any(r.startswith("h100-west/h100-0: NVIDIA-H100-80GB-HBM3") for r in answer["refusals"])
    assert answer["estimate"]["weights_gib"] > 1400

    deploy = api.post(
        "/deployments/deploy",
        {"name": "huge", **LLAMA_8B, "model": "llama-3.1-405b", "dtype": "float32", "context_len": 32768},
        format="json",
    )
    assert deploy.status_code == 422 and deploy.json()["code"] == "no_fit"
    assert deploy.json()["fleet"]["refused_clusters_total"] == 7
    assert not Deployment.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize("registered", [False, True])
def test_no_available_cluster_is_a_clear_422(api, registered):
    if registered:
        _cluster("down", status="not_available", reason="API server not answering")
        _cluster("err", status="error", reason="kubeconfig rejected")
    plan = _plan(api)
    assert plan.status_code == 422
    answer = plan.json()
    assert answer["code"] == "no_cluster"
    if registered:
        assert "none of the 2 clusters is available" in answer["detail"]
        reasons = {r["cluster_name"]: r["reason"] for r in answer["fleet"]["refused_clusters"]}
        assert reasons == {
            "down": "cluster is not_available: API server not answering",
            "err": "cluster is error: kubeconfig rejected",
        }
    else:
        assert answer["detail"].startswith("no cluster is registered")
    deploy = api.post("/deployments/deploy", {"name": "d", **LLAMA_8B}, format="json")
    assert deploy.status_code == 422 and deploy.json()["code"] == "no_cluster"
    assert not Deployment.objects.exists() and not Run.objects.exists()


def test_deploy_without_a_cluster_takes_the_best_one_and_says_which(api, fleet):
    with _broker_at("memory://"):  # the runs are not executed here (the devcluster test below runs one)
        first = api.post("/deployments/deploy", {"name": "llama", **LLAMA_8B}, format="json")
        assert first.status_code == 202, first.json()
        assert (first.json()["cluster"], first.json()["cluster_name"]) == (fleet["h100"].pk, "h100-west")
        deployment = Deployment.objects.get(pk=first.json()["deployment_id"])
        assert deployment.cluster_id == fleet["h100"].pk

        # The name is taken on the best cluster now: the next best is taken, and the plan said so beforehand.
        second = api.post("/deployments/deploy", {"name": "llama", **LLAMA_8B}, format="json")
        assert second.status_code == 202, second.json()
        assert second.json()["cluster_name"] == "a100-40"
        # A deploy naming its cluster answers as before: no cluster fields added.
        named = api.post(
            "/deployments/deploy", {"cluster": "l4-east", "name": "x", **LLAMA_8B}, format="json"
        )
        assert named.status_code == 202 and "cluster_name" not in named.json()
    assert Deployment.objects.filter(name="llama").count() == 2


def test_the_fleet_is_read_in_a_constant_number_of_queries():
    def queries(clusters: int) -> int:
        Cluster.objects.all().delete()
        for i in range(clusters):
            cluster = _cluster(f"c{i:03d}", status="available" if i % 5 else "not_available")
            _gpu_node(cluster, f"c{i}-gpu", H100 if i % 2 else A100_40, free=i % 9)
            _cpu_node(cluster, f"c{i}-cpu")
        with CaptureQueriesContext(connection) as captured:
            outcome = services.plan_fleet(dict(LLAMA_8B))
        assert outcome.ok and outcome.fleet.clusters_total == clusters
        return len(captured)

    few, many = queries(3), queries(60)
    assert few == many <= 3, (few, many)


# --- on the devcluster, with a real worker ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_fleet_deploy_runs_on_the_chosen_cluster(api, gpu_reset, settings):  # noqa: F811
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    devcluster = _store_cluster(gpu_reset)  # its H100s and A100s (real inventory) beat a CPU-only cluster's
    cpu = _cluster("cpu-only")
    _cpu_node(cpu, "cpu-0")
    _cluster("down", status="not_available", reason="API server not answering")

    request = {"name": "fleet-8b", **LLAMA_8B, "concurrency": 8}
    planned = api.post("/deployments/plan", request, format="json").json()
    assert planned["cluster_name"] == devcluster.name and planned["placement"]["device_type"] != "cpu"
    response = api.post("/deployments/deploy", request, format="json")
    assert response.status_code == 202, response.json()
    assert response.json()["cluster_name"] == devcluster.name
    run = finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    deployment = Deployment.objects.get(pk=response.json()["deployment_id"])
    assert deployment.cluster_id == devcluster.pk and deployment.status == "running"
    # The run placed it where the plan said (it re-reads the inventory, which nothing changed meanwhile).
    assert deployment.placement["candidate"]["nodes"] == planned["placement"]["nodes"]
    assert deployment.placement["candidate"]["device_type"] == planned["placement"]["device_type"]
