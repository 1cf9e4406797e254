"""A cluster's page and a node's page in the console (issue "The operators' console and the API contract", item 10).

A cluster's page opens with what an operator reads first, in this order: its status with the reason, its capacity by
accelerator model (total and free, as the fleet dashboard counts them), its deployments, its latest runs (its own and
its deployments') and events; the editable fields come after. Sizes read in GiB, and taints, allocatable and requested
resources and labels are tables, not JSON. Each section follows the user's view permissions; pages the user may only
read (view permission only, and the Release and Node pages, which nobody edits) have no Save button. The page costs
the same number of queries for a cluster ten times larger.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clusters.models import Cluster, ClusterEvent, Release
from core.models import Run, RunStep
from deployments.models import Deployment
from hardware.models import Node
from tests.console.test_dashboard import _attr, _find, _one, _page, _text

pytestmark = pytest.mark.django_db

GIB = 1024**3
EVERYTHING = (
    "clusters.view_cluster",
    "clusters.change_cluster",
    "hardware.view_node",
    "deployments.view_deployment",
    "core.view_run",
)


def _url(cluster: Cluster) -> str:
    return f"/admin/clusters/cluster/{cluster.pk}/change/"


def _node(
    cluster, name, *, model=None, kind="cuda", count=0, free=0, memory_gib=512, device_mib=None, **extra
):
    return Node.objects.create(
        cluster=cluster, name=name, ready=extra.pop("ready", True), accelerator_type=kind, accelerator_model=model,
        accelerator_count=count, free_accelerators=free, memory_bytes=memory_gib * GIB,
        free_memory_bytes=memory_gib * GIB // 2, accelerator_memory_mib=device_mib, **extra,
    )  # fmt: skip


def _run(subject, title: str, status: str, **extra) -> Run:
    return Run.objects.create(
        kind=extra.pop("kind", "cluster.register"), title=title, status=status,
        subject_type=ContentType.objects.get_for_model(subject), subject_id=str(subject.pk), **extra,
    )  # fmt: skip


def _seed(suffix: str = "", *, events: int = 3) -> Cluster:
    """prod-a: two H100 nodes (one not ready), an MI300X node and a CPU node; deployments running, failed and
    deleted; its own runs (one failed), a run of a deployment, and events. Another cluster with a run of its own."""
    now = timezone.now()
    cluster = Cluster.objects.create(
        name=f"prod-a{suffix}", status="not_available", reason="API server unreachable: connection refused",
        server_url=f"https://a{suffix}.example", labels={"team": "ml", "region": "eu-west"},
        not_available_since=now,
    )  # fmt: skip
    _node(
        cluster, "gpu-1", model="NVIDIA-H100-80GB-HBM3", count=8, free=3, device_mib=81559,
        taints=[{"key": "nvidia.com/gpu", "value": None, "effect": "NoSchedule"}],
        allocatable={"cpu_millicores": 64000, "memory_bytes": 500 * GIB, "accelerators": 8},
        requested={"pods": 3, "cpu_millicores": 2500, "memory_bytes": 8 * GIB, "resources": {"nvidia.com/gpu": 5}},
    )  # fmt: skip
    _node(cluster, "gpu-2", model="NVIDIA-H100-80GB-HBM3", count=8, free=8, device_mib=81559, ready=False)
    _node(cluster, "amd-1", kind="rocm", model="AMD-Instinct-MI300X", count=8, free=2, device_mib=196608)
    _node(cluster, "cpu-1", kind="cpu", memory_gib=256)
    running = Deployment.objects.create(
        cluster=cluster, name="llama", namespace=f"bud-llama{suffix}-1", model_name="meta-llama/Llama-3-8B",
        status="running", replicas=2, ready_replicas=2, placement={"candidate": {"summary": "2x H100 (TP 1)"}},
    )  # fmt: skip
    Deployment.objects.create(
        cluster=cluster, name="qwen", namespace=f"bud-qwen{suffix}-1", model_name="Qwen/Qwen2-7B",
        status="failed", reason="image pull failed: manifest unknown",
    )  # fmt: skip
    Deployment.objects.create(
        cluster=cluster, name="old", namespace=f"bud-old{suffix}-1", model_name="gpt2", status="deleted"
    )
    registered = _run(cluster, f"Register prod-a{suffix}", "succeeded", created_at=now - timedelta(hours=2))
    failed = _run(
        cluster, f"Collect node information on prod-a{suffix}", "failed", kind="hardware.collect",
        error="", created_at=now - timedelta(hours=1),
    )  # fmt: skip
    RunStep.objects.create(
        run=failed, order=0, name="wait", title="Wait for collectors", status="failed",
        message="nfd-worker 6/7 ready: node gpu-2 is NotReady",
    )  # fmt: skip
    deploying = _run(running, f"Deploy llama{suffix}", "running", kind="deployment.deploy", progress=42.4)
    other = Cluster.objects.create(
        name=f"prod-b{suffix}", status="available", server_url=f"https://b{suffix}"
    )
    _run(other, f"Register prod-b{suffix}", "succeeded")
    for i in range(events):
        ClusterEvent.objects.create(
            cluster=cluster, kind="health", message=f"check {i}", old_status="available",
            new_status="not_available", created_at=now - timedelta(minutes=events - i),
        )  # fmt: skip
    cluster._runs = {"registered": registered, "failed": failed, "deploying": deploying}  # type: ignore[attr-defined]
    return cluster


@pytest.fixture
def operator(client, make_user):
    client.force_login(make_user("operator", *EVERYTHING))
    return client


# --- what the page shows, in order ------------------------------------------------------------------------------


def test_the_page_opens_with_status_capacity_deployments_runs_and_events_then_the_fields(operator):
    cluster = _seed()
    response, page = _page(operator, _url(cluster))
    content = response.content.decode()
    order = [
        content.index(f'id="{section}"')
        for section in (
            "cluster-status",
            "cluster-capacity",
            "cluster-deployments",
            "cluster-runs",
            "cluster-events",
        )
    ]
    assert order == sorted(order)
    assert order[-1] < content.index('id="id_name"') < content.index('id="nodes-group"')

    status = _one(page, id="cluster-status")
    assert "Not available" in _text(_one(status, cls="status"))
    assert _text(_one(status, cls="reason")) == "API server unreachable: connection refused"
    labels = {_text(r.children[0]): _text(r.children[1]) for r in _find(_one(status, cls="labels"), tag="tr")}
    assert labels == {"team": "ml", "region": "eu-west"}

    capacity = _one(page, id="cluster-capacity")
    assert (_text(_one(capacity, cls="nodes-ready")), _text(_one(capacity, cls="nodes-total"))) == ("3", "4")
    assert _text(_one(capacity, cls="node-memory")) == "1,792.0 GiB"  # 3 x 512 + 256, not bytes
    models = {_attr(r, "data-model"): r for r in _find(capacity, cls="capacity-model")}
    assert set(models) == {"NVIDIA-H100-80GB-HBM3", "AMD-Instinct-MI300X"}  # the CPU node has no devices
    h100, mi300x = models["NVIDIA-H100-80GB-HBM3"], models["AMD-Instinct-MI300X"]
    assert [_text(_one(h100, cls=c)) for c in ("total", "free", "device-memory")] == ["16", "11", "79.6 GiB"]
    assert [_text(_one(mi300x, cls=c)) for c in ("total", "free", "device-memory")] == ["8", "2", "192.0 GiB"]
    used, free = _find(h100, tag="rect")  # the widest model's bar: 11 of 16 free
    assert (_attr(used, "width"), _attr(free, "width")) == ("62", "138")

    rows = {
        _attr(r, "data-key"): r for r in _find(_one(page, id="cluster-deployments"), cls="cluster-deployment")
    }
    assert set(rows) == {"llama", "qwen"}  # the deleted one is history, not on the cluster
    assert "2/2" in _text(rows["llama"]) and "2x H100 (TP 1)" in _text(rows["llama"])
    assert _text(_one(rows["qwen"], cls="reason")) == "image pull failed: manifest unknown"

    runs = {_attr(r, "data-run"): r for r in _find(_one(page, id="cluster-runs"), cls="cluster-run")}
    mine = cluster._runs
    assert list(runs) == [str(mine[k].pk) for k in ("deploying", "failed", "registered")]  # newest first
    assert _attr(_one(runs[str(mine["deploying"].pk)], tag="progress"), "value") == "42"
    failed = runs[str(mine["failed"].pk)]
    assert _text(_one(failed, cls="cause")) == "nfd-worker 6/7 ready: node gpu-2 is NotReady"
    assert "Wait for collectors" in _text(failed)
    assert "prod-b" not in _text(_one(page, id="cluster-runs"))  # another cluster's run

    events = [
        _text(_one(r, cls="message")) for r in _find(_one(page, id="cluster-events"), cls="cluster-event")
    ]
    assert events == ["check 2", "check 1", "check 0"]
    assert re.search(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", _text(_one(page, id="cluster-events"))
    )  # seconds shown


def test_the_latest_events_only(operator):
    cluster = _seed(events=30)
    _response, page = _page(operator, _url(cluster))
    events = [
        _text(_one(r, cls="message")) for r in _find(_one(page, id="cluster-events"), cls="cluster-event")
    ]
    assert events == [f"check {i}" for i in range(29, 9, -1)]


def test_sections_follow_the_view_permissions(client, make_user):
    cluster = _seed()
    client.force_login(make_user("viewer", "clusters.view_cluster"))
    html = client.get(_url(cluster)).content.decode()
    assert 'id="cluster-status"' in html and 'id="cluster-events"' in html
    for hidden in ("cluster-capacity", "cluster-deployments", "cluster-runs"):
        assert f'id="{hidden}"' not in html, hidden
    assert "image pull failed" not in html and "Deploy llama" not in html

    client.force_login(make_user("runs", "clusters.view_cluster", "core.view_run"))
    html = client.get(_url(cluster)).content.decode()
    assert 'id="cluster-runs"' in html and "Deploy llama" in html and 'id="cluster-deployments"' not in html


# --- human units and tables -------------------------------------------------------------------------------------


def test_the_node_page_shows_sizes_in_gib_and_tables_not_json(admin_client):
    cluster = _seed()
    node = Node.objects.get(cluster=cluster, name="gpu-1")
    response, page = _page(admin_client, f"/admin/hardware/node/{node.pk}/change/")
    content = response.content.decode()
    assert str(512 * GIB) not in content and str(500 * GIB) not in content  # no raw bytes
    assert '"memory_bytes"' not in content and "&quot;key&quot;" not in content and '{"' not in content

    def readonly(name: str):
        return _one(_one(page, cls=f"field-{name}"), cls="readonly")

    assert _text(readonly("memory")) == "512.0 GiB" and _text(readonly("accelerator_memory")) == "79.6 GiB"
    taints = _one(readonly("taints_table"), tag="table")
    assert [_text(c) for c in _find(taints, tag="th")] == ["key", "value", "effect"]
    assert [_text(c) for c in _find(taints, tag="td")] == ["nvidia.com/gpu", "-", "NoSchedule"]
    allocatable = {
        _text(r.children[0]): _text(r.children[1]) for r in _find(readonly("allocatable_table"), tag="tr")
    }
    assert allocatable == {"cpu": "64 cores", "memory": "500.0 GiB", "accelerators": "8"}
    outer, nested = _find(readonly("requested_table"), tag="table")  # {"resources": {...}} nests a table
    top = {
        _text(r.children[0]): r.children[1] for r in _find(outer, tag="tbody")[0].children if r.name == "tr"
    }
    assert (
        _text(top["memory"]) == "8.0 GiB" and _text(top["cpu"]) == "2.5 cores" and _text(top["pods"]) == "3"
    )
    assert [_text(c) for c in _find(nested, tag="th") + _find(nested, tag="td")] == ["nvidia.com/gpu", "5"]
    assert _find(top["resources"], tag="table") == [nested]


def test_the_node_inline_shows_gib(operator):
    cluster = _seed()
    _response, page = _page(operator, _url(cluster))
    nodes = _one(page, id="nodes-group")
    memory = [_text(c) for c in _find(nodes, cls="field-memory")]
    assert "512.0 GiB" in memory and "256.0 GiB" in memory


# --- no Save button where nothing can be saved ------------------------------------------------------------------


def _buttons(html: str) -> set[str]:
    return set(re.findall(r'<input type="submit"[^>]*name="(_\w+)"', html))


def test_read_only_pages_have_no_save_button(client, make_user, admin_client, operator):
    cluster = _seed()
    node = Node.objects.get(cluster=cluster, name="gpu-1")
    release = Release.objects.create(cluster=cluster, name="collectors", namespace="bud-system", chart="nfd")

    assert "_save" in _buttons(operator.get(_url(cluster)).content.decode())  # who may change the cluster can

    client.force_login(
        make_user("viewer", "clusters.view_cluster", "hardware.view_node", "clusters.view_release")
    )
    html = client.get(_url(cluster)).content.decode()
    assert not _buttons(html)
    assert 'name="new_kubeconfig"' not in html and 'name="labels"' not in html
    assert re.search(r'field-labels_table.*?<table class="data-table">', html, re.S)  # the labels as a table
    for url in (f"/admin/hardware/node/{node.pk}/change/", f"/admin/clusters/release/{release.pk}/change/"):
        for who in (client, admin_client):  # nobody edits these, not even a superuser
            response = who.get(url)
            assert response.status_code == 200 and not _buttons(response.content.decode()), url
    assert admin_client.post(f"/admin/hardware/node/{node.pk}/change/", {"name": "x"}).status_code == 403
    assert Node.objects.get(pk=node.pk).name == "gpu-1"


def test_the_fields_after_the_overview_still_save(operator):
    cluster = _seed()
    response = operator.post(
        _url(cluster),
        {
            "name": "prod-renamed", "ingress_url": "", "labels": '{"team": "infra"}', "new_kubeconfig": "",
            "new_context": "", "nodes-TOTAL_FORMS": "4", "nodes-INITIAL_FORMS": "4", "nodes-MIN_NUM_FORMS": "0",
            "nodes-MAX_NUM_FORMS": "0", "_save": "Save",
            **{f"nodes-{i}-id": str(n.pk) for i, n in enumerate(cluster.nodes.order_by("name"))},
            **{f"nodes-{i}-cluster": str(cluster.pk) for i in range(4)},
        },
    )  # fmt: skip
    assert response.status_code == 302, _text_errors(response)
    cluster.refresh_from_db()
    assert (cluster.name, cluster.labels) == ("prod-renamed", {"team": "infra"})


def _text_errors(response) -> str:
    return " ".join(
        re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    )


# --- cost -------------------------------------------------------------------------------------------------------


def test_the_query_count_does_not_grow_with_the_cluster(operator, django_assert_max_num_queries):
    cluster = _seed()
    with CaptureQueriesContext(connection) as small:
        assert operator.get(_url(cluster)).status_code == 200
    now = timezone.now()
    for n in range(10):  # ten times the nodes, deployments, runs and events, on the same cluster
        _node(cluster, f"more-gpu-{n}", model="NVIDIA-A100-SXM4-40GB", count=4, free=n % 4)
        deployment = Deployment.objects.create(
            cluster=cluster,
            name=f"d{n}",
            namespace=f"bud-d{n}-1",
            model_name="gpt2",
            status="failed",
            reason="x",
        )
        _run(deployment, f"Deploy d{n}", "failed", kind="deployment.deploy", error="boom")
        _run(cluster, f"Check {n}", "succeeded", kind="hardware.collect")
        ClusterEvent.objects.create(cluster=cluster, kind="health", message=f"more {n}", created_at=now)
    with django_assert_max_num_queries(len(small)):
        assert operator.get(_url(cluster)).status_code == 200


def test_a_deployments_config_and_a_benchmarks_settings_are_tables(admin_client):
    from deployments.models import Benchmark

    cluster = _seed()
    deployment = Deployment.objects.get(cluster=cluster, name="llama")
    Deployment.objects.filter(pk=deployment.pk).update(
        config={"dtype": "bfloat16", "context_len": 8192, "source": {"type": "huggingface"}}
    )
    _response, page = _page(admin_client, f"/admin/deployments/deployment/{deployment.pk}/change/")
    config = _one(_one(page, cls="field-config_table"), cls="readonly")
    rows = {_text(r.children[0]): _text(r.children[1]) for r in _find(config, tag="tr")}
    assert rows["dtype"] == "bfloat16" and rows["context_len"] == "8192" and rows["type"] == "huggingface"

    benchmark = Benchmark.objects.create(
        deployment=deployment, status="succeeded", settings={"max_tokens": 256}, options={"concurrency": 8}
    )
    _response, page = _page(admin_client, f"/admin/deployments/benchmark/{benchmark.pk}/change/")
    for field, key, value in (("settings_table", "max_tokens", "256"), ("options_table", "concurrency", "8")):
        table = _one(_one(page, cls=f"field-{field}"), cls="readonly")
        assert {_text(r.children[0]): _text(r.children[1]) for r in _find(table, tag="tr")} == {key: value}
