"""The whole lifecycle on a real control plane, with real workers, PostgreSQL and Redis.

Register with the admin kubeconfig; the setup playbook creates BudCluster's service account and role; then the
cluster's kubeconfig is replaced by that service account's token kubeconfig and everything else runs with those
rights only: collectors (CRDs included) → inventory → plan → deploy → scale 1→3 → upgrade → rollback →
benchmark → delete → cluster deletion with teardown.
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from kubernetes import client

from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from deployments.models import Deployment
from tests.worker import run_finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def finished(run_id, timeout: float = 120) -> Run:
    return run_finished(run_id, timeout)


def succeeded(response, timeout: float = 120) -> Run:
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"], timeout)
    assert run.status == RunStatus.SUCCEEDED, (run.error, list(run.steps.values_list("name", "message")))
    return run


def service_account_token(cp, namespace: str = "bud-system", name: str = "budcluster-token") -> str:
    core = client.CoreV1Api(cp.client())

    def token():
        secret = core.read_namespaced_secret(name, namespace)
        return (secret.data or {}).get("token")

    return base64.b64decode(wait_for(token, timeout=30, what="the service account token")).decode()


def test_whole_lifecycle_with_the_service_account_token(api, worker, real_cluster):
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    # 1. Register with the admin kubeconfig.
    response = api.post(
        "/clusters/register", {"name": "real", "kubeconfig": real_cluster.kubeconfig_yaml()}, format="json"
    )
    succeeded(response, timeout=180)
    cluster = Cluster.objects.get(name="real")
    assert cluster.status == "available"
    lap("register (admin)")

    # 2. The same cluster, now through BudCluster's own service account token: verification, setup and
    #    collection run again with those rights only.
    token_kubeconfig = real_cluster.token_kubeconfig_yaml(service_account_token(real_cluster), "budcluster")
    response = api.patch(f"/clusters/{cluster.pk}", {"kubeconfig": token_kubeconfig}, format="json")
    succeeded(response, timeout=180)
    cluster.refresh_from_db()
    assert cluster.status == "available"
    lap("re-register (service account)")

    # Inventory: the collectors ran and the nodes carry what feature discovery publishes.
    nodes = {n["name"]: n for n in api.get(f"/clusters/{cluster.pk}/nodes?limit=100").json()["results"]}
    assert set(nodes) == set(real_cluster.hardware)
    assert nodes["gpu-h100-0"]["accelerator_type"] == "cuda"
    info = api.get(f"/clusters/{cluster.pk}/device-info").json()
    h100 = next(n for n in info["nodes"] if n["node"] == "gpu-h100-0")
    assert "H100" in str(h100["devices"][0]) and h100["devices"][0]["free"] == 8
    amd = api.get(f"/clusters/{cluster.pk}/nodes?accelerator_vendor=amd").json()["results"]
    assert [n["name"] for n in amd] == ["gpu-mi300x-0"]
    # The AMD labeller ran on the MI300X node only (its DaemonSet selects NFD's pci-1002 label) and the Gaudi
    # generation comes from the device id NFD's worker rule labels.
    mi300, gaudi = amd[0], nodes["hpu-gaudi2-0"]
    assert (mi300["accelerator_model"], mi300["accelerator_memory_mib"]) == ("AMD Instinct MI300X", 196608)
    assert (gaudi["accelerator_model"], gaudi["accelerator_count"]) == ("Gaudi2", 8)
    apps = client.AppsV1Api(real_cluster.client())
    labeller = apps.read_namespaced_daemon_set("bud-node-info-amd-gpu-labeller", "bud-system").status
    assert (labeller.desired_number_scheduled, labeller.number_ready) == (1, 1)
    lap("inventory")

    # 3. Deploy.
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": "life", **SMALL}, format="json"
    )
    succeeded(response)
    deployment = Deployment.objects.get(pk=response.json()["deployment_id"])
    detail = api.get(f"/deployments/{deployment.pk}").json()
    models = httpx.get(f"{detail['endpoint_url']}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["llama-3.1-8b-instruct"]
    lap("deploy")

    # 4. Scale 1 → 3, upgrade, roll back.
    succeeded(api.patch(f"/deployments/{deployment.pk}", {"replicas": 3}, format="json"))
    workers = api.get(f"/deployments/{deployment.pk}/workers").json()["results"]
    assert len(workers) == 3 and all(w["ready"] for w in workers)
    succeeded(
        api.patch(
            f"/deployments/{deployment.pk}", {"engine_args": ["--enable-prefix-caching"]}, format="json"
        )
    )
    succeeded(api.post(f"/deployments/{deployment.pk}/rollback", {"revision": 1}, format="json"))
    detail = api.get(f"/deployments/{deployment.pk}").json()
    assert [r["number"] for r in detail["revisions"]] == [4, 3, 2, 1]
    assert (detail["replicas"], detail["status"]) == (1, "running")
    lap("scale/upgrade/rollback")

    # 5. Benchmark.
    response = api.post(
        f"/deployments/{deployment.pk}/benchmark", {"requests": 10, "concurrency": 2}, format="json"
    )
    succeeded(response)
    lap("benchmark")

    # 6. Delete the deployment: the namespace goes through the real namespace controller.
    succeeded(api.delete(f"/deployments/{deployment.pk}"))
    core = client.CoreV1Api(real_cluster.client())
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert deployment.namespace not in names
    lap("delete deployment")

    # 7. Delete the cluster with teardown, still as the service account.
    succeeded(api.delete(f"/clusters/{cluster.pk}"), timeout=180)
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    rbac = client.RbacAuthorizationV1Api(real_cluster.client())
    assert "budcluster" not in [r.metadata.name for r in rbac.list_cluster_role().items]
    # The garbage collector removes what the role owned: its binding and BudCluster's own namespace.
    wait_for(
        lambda: "budcluster" not in [b.metadata.name for b in rbac.list_cluster_role_binding().items]
        and "bud-system" not in [n.metadata.name for n in core.list_namespace().items],
        timeout=60,
        what="the binding and bud-system to be garbage collected",
    )
    lap("delete cluster")
    print("lifecycle timings (s):", timings, "total", round(time.monotonic() - started, 1))
