"""Hardware collection end to end on the devcluster `gpu-mixed` preset, with a real worker.

The devcluster holds two virtual clusters of the preset: the test that removes a node does it on the second one,
so every other test sees the preset's seven nodes whatever ran before it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from kubernetes import client

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster, Release
from core.choices import RunStatus
from core.models import Run
from devcluster.testing import devcluster_fixture, kube_client
from hardware import services
from hardware.models import Node
from tests.worker import wait_for

gpu = devcluster_fixture(name="gpu", nodes="gpu-mixed", clusters=2, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nodes"


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _finished(run_id) -> Run:
    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    return wait_for(done, timeout=90, what="run to finish")


def _register(api, dc, vc: str, name: str) -> Cluster:
    response = api.post(
        "/clusters/register", {"name": name, "kubeconfig": dc.kubeconfig_yaml(vc)}, format="json"
    )
    assert response.status_code == 202, response.json()
    run = _finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Cluster.objects.get(name=name)


@pytest.fixture
def registered(api, worker, gpu) -> Cluster:
    """The first virtual cluster registered: the preset as it is (no test changes its nodes)."""
    return _register(api, gpu, gpu.names[0], "gpu-mixed")


@pytest.fixture
def registered_own(api, worker, gpu) -> tuple[Cluster, str]:
    """The second virtual cluster registered, and its name: for a test that removes a node."""
    return _register(api, gpu, gpu.names[1], "gpu-mixed-own"), gpu.names[1]


def test_registration_rolls_out_collectors_and_inventory_matches_preset(api, registered, gpu):
    run = Run.objects.filter(subject_id=str(registered.pk), kind="cluster.register").first()
    names = [s.name for s in run.steps.filter(phase="main")]
    assert names[-3:] == ["ensure_collectors", "wait_collectors", "read_nodes"]
    release = Release.objects.get(cluster=registered, name="bud-node-info")
    assert release.current_revision == 1
    assert any(o["kind"] == "DaemonSet" for o in release.revisions.get(number=1).applied)

    nodes = {n.name: n for n in Node.objects.filter(cluster=registered)}
    assert len(nodes) == 7
    h100 = nodes["gpu-h100-0"]
    assert (h100.accelerator_type, h100.accelerator_vendor) == ("cuda", "NVIDIA")
    assert h100.accelerator_model == "NVIDIA-H100-80GB-HBM3"
    assert h100.accelerator_count == 8 and h100.accelerator_memory_mib == 81559
    a100 = nodes["gpu-a100-mig-0"]
    assert a100.accelerator_model == "NVIDIA-A100-SXM4-80GB"
    assert a100.mig == {"1g.10gb": 7, "3g.40gb": 2}
    assert nodes["ip-10-0-12-34.ec2.internal"].accelerator_model == "NVIDIA-L4"
    mi300 = nodes["gpu-mi300x-0"]
    assert (mi300.accelerator_type, mi300.accelerator_vendor, mi300.accelerator_count) == ("rocm", "AMD", 8)
    # From the AMD labeller the chart runs on the node: amd.com/gpu.product-name and .vram (192G).
    assert mi300.accelerator_model == "AMD Instinct MI300X"
    assert mi300.accelerator_memory_mib == 192 * 1024
    assert mi300.driver_version == "6.8.5"
    gaudi = nodes["hpu-gaudi2-0"]
    assert (gaudi.accelerator_type, gaudi.accelerator_count) == ("hpu", 8)
    # From the device id the chart's nfd-worker rule labels (1da3:1020); memory is Gaudi2's published 96 GB.
    assert (gaudi.accelerator_vendor, gaudi.accelerator_model) == ("Intel", "Gaudi2")
    assert gaudi.accelerator_memory_mib == 96 * 1024
    xeon = nodes["cpu-xeon-spr-0"]
    assert xeon.accelerator_type == "cpu"
    assert {"AMXBF16", "AMXINT8", "AVX512F"} <= set(xeon.cpu_flags)
    assert not nodes["control-plane-0"].schedulable

    summary = api.get(f"/clusters/{registered.pk}").json()["summary"]
    assert summary["nodes"] == 7 and summary["ready_nodes"] == 7
    assert summary["gpus"]["NVIDIA-H100-80GB-HBM3"] == {"type": "cuda", "total": 8, "free": 8}
    assert summary["gpus"]["AMD Instinct MI300X"] == {"type": "rocm", "total": 8, "free": 8}
    assert summary["gpus"]["Gaudi2"] == {"type": "hpu", "total": 8, "free": 8}
    assert not [model for model in summary["gpus"] if model.startswith("unknown")]


def test_pod_using_two_gpus_lowers_free_count_and_removed_node_disappears(api, registered_own, gpu):
    registered, vc = registered_own
    core = client.CoreV1Api(kube_client(gpu, vc))
    core.create_namespaced_pod(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "two-gpus"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "gpu-h100-0"},
                "containers": [
                    {"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
                ],
            },
        },
    )
    try:
        wait_for(lambda: core.read_namespaced_pod("two-gpus", "default").spec.node_name, what="pod bound")
        response = api.post(f"/clusters/{registered.pk}/collect-node-info")
        assert response.status_code == 202
        assert _finished(response.json()["run_id"]).status == RunStatus.SUCCEEDED
        h100 = Node.objects.get(cluster=registered, name="gpu-h100-0")
        assert (h100.accelerator_count, h100.free_accelerators) == (8, 6)
        info = api.get(f"/clusters/{registered.pk}/device-info").json()
        node = next(n for n in info["nodes"] if n["node"] == "gpu-h100-0")
        assert node["devices"][0]["free"] == 6
    finally:
        core.delete_namespaced_pod("two-gpus", "default")

    core.delete_node("cpu-xeon-spr-0")
    with cluster_services.gateway_for(registered) as gw:
        result = services.refresh_inventory(registered, gw)
    assert result["removed"] == 1
    assert not Node.objects.filter(cluster=registered, name="cpu-xeon-spr-0").exists()


def test_cluster_admin_shows_the_nodes_and_collects_through_the_service(admin_client, registered):
    page = admin_client.get(f"/admin/clusters/cluster/{registered.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "gpu-h100-0" in html and "NVIDIA-H100-80GB-HBM3" in html  # the node inline
    assert "Collect node information" in admin_client.get("/admin/clusters/cluster/").content.decode()

    registering = Cluster.objects.create(name="still-registering", status=ClusterStatus.REGISTERING)
    response = admin_client.post(
        "/admin/clusters/cluster/",
        {"action": "collect_node_info", "_selected_action": [registered.pk, registering.pk]},
        follow=True,
    )
    shown = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert ("warning", "cluster still-registering is registering; it must be available") in shown
    assert ("info", "Node information collection started for 1 cluster(s).") in shown
    runs = Run.objects.filter(kind="hardware.collect")
    assert [r.subject_id for r in runs] == [str(registered.pk)]
    assert _finished(runs[0].pk).status == RunStatus.SUCCEEDED


def test_collect_action_takes_the_api_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    Cluster.objects.create(
        name="listed", status=ClusterStatus.AVAILABLE
    )  # the changelist shows actions with rows
    user = django_user_model.objects.create_user("operator", password="a-long-test-password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_cluster"))
    client.force_login(user)
    assert "Collect node information" not in client.get("/admin/clusters/cluster/").content.decode()
    user.user_permissions.add(Permission.objects.get(codename="add_node"))
    client.force_login(django_user_model.objects.get(pk=user.pk))  # fresh permission cache
    assert "Collect node information" in client.get("/admin/clusters/cluster/").content.decode()


def test_collecting_a_cluster_that_is_not_ready_is_refused_with_a_code(api):
    cluster = Cluster.objects.create(name="broken", status=ClusterStatus.ERROR)
    response = api.post(f"/clusters/{cluster.pk}/collect-node-info")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "cluster broken is error; it must be available",
        "code": "cluster_not_ready",
    }
    assert not Run.objects.filter(kind="hardware.collect").exists()


def test_nodes_api_filters_and_constant_queries(api, registered):
    cuda = api.get(f"/clusters/{registered.pk}/nodes?accelerator_type=cuda").json()
    assert {n["name"] for n in cuda["results"]} >= {"gpu-h100-0", "gpu-a100-mig-0"}
    assert all(n["accelerator_type"] == "cuda" for n in cuda["results"])
    amd = api.get(f"/clusters/{registered.pk}/nodes?accelerator_vendor=amd").json()
    assert [n["name"] for n in amd["results"]] == ["gpu-mi300x-0"]
    assert api.get(f"/clusters/{registered.pk}/nodes?accelerator_type=tpu").status_code == 400
    counts = []
    for limit in (1, 5):
        with CaptureQueriesContext(connection) as ctx:
            assert api.get(f"/clusters/{registered.pk}/nodes?limit={limit}").status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1]
    assert api.get("/clusters/999999/nodes").status_code == 404


def test_inspect_nodes_command_prints_json(tmp_path):
    out = io.StringIO()
    call_command("inspect_nodes", str(FIXTURES / "h100-xe9680.yaml"), "--json", stdout=out)
    (node,) = json.loads(out.getvalue())
    assert node["accelerator_model"].startswith("NVIDIA-H100")
    assert list(node)[:4] == ["node", "ready", "schedulable", "taints"]


class _Gateway:
    """The two reads `unlabelled_nodes` makes, answered from lists (no cluster needed for the rule itself)."""

    def __init__(self, nodes: dict[str, dict[str, str]]):
        self.nodes = nodes

    def list(self, api_version, kind, namespace=None, *, label_selector=None, **_):
        if kind == "Node":
            return [{"metadata": {"name": n, "labels": labels}} for n, labels in self.nodes.items()]
        return []  # no labeller pod is ready yet


def test_collectors_wait_for_the_amd_labeller_on_nodes_nfd_found_an_amd_gpu_on():
    labeller = {
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/component": "amd-gpu-labeller"}},
            "template": {"spec": {"nodeSelector": {"feature.node.kubernetes.io/pci-1002.present": "true"}}},
        }
    }
    nfd = {"feature.node.kubernetes.io/pci-1002.present": "true", "kubernetes.io/os": "linux"}
    gw = _Gateway({"gpu-mi300x-0": nfd, "cpu-0": {"kubernetes.io/os": "linux"}})
    daemonsets = {"bud-node-info-amd-gpu-labeller": labeller}
    assert services.unlabelled_nodes(gw, "bud-system", daemonsets) == ["gpu-mi300x-0"]
    gw.nodes["gpu-mi300x-0"] = {**nfd, "amd.com/gpu.product-name": "AMD_Instinct_MI300X"}
    assert services.unlabelled_nodes(gw, "bud-system", daemonsets) == []
