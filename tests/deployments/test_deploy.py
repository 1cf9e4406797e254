"""Deploying models end to end: the REST API, a real worker, the devcluster gpu-mixed preset over HTTPS."""

from __future__ import annotations

import httpx
import pytest

from clusters.models import Release, Revision
from core.choices import RunStatus
from core.models import Run
from deployments.models import Deployment, DeploymentEvent, Worker

from .conftest import finished

pytestmark = pytest.mark.django_db(transaction=True)

LLAMA_8B = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}


def _deploy(api, cluster, name: str, **extra) -> dict:
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": name, **LLAMA_8B, **extra}, format="json"
    )
    assert response.status_code == 202, response.json()
    return response.json()


def test_8b_model_deploys_to_a_gpu_and_its_endpoint_answers(api, registered_cluster):
    # A user's way in: the cluster registered through the API (its run rolled the collectors out), then deployed to.
    cluster = registered_cluster
    body = _deploy(api, cluster, "llama-8b", hf_token="hf_sEcReT_tOkEn_123", device_type="cuda")
    run = finished(body["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    deployment = Deployment.objects.get(pk=body["deployment_id"])
    assert deployment.status == "running"
    assert (
        deployment.namespace.startswith("bud-llama-8b-") and len(deployment.namespace.rsplit("-", 1)[1]) == 8
    )
    assert deployment.placement["candidate"]["device_type"] == "cuda"

    # The endpoint is the Service's LoadBalancer address and it serves the model.
    detail = api.get(f"/deployments/{deployment.pk}").json()
    url = detail["endpoint_url"]
    assert url.startswith("http://127.0.1.")
    models = httpx.get(f"{url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["llama-3.1-8b-instruct"]
    assert detail["revision"] == 1 and [r["number"] for r in detail["revisions"]] == [1]
    assert detail["run"]["status"] == "succeeded"
    assert [w["ready"] for w in detail["workers"]] == [True]
    assert detail["workers"][0]["node"] in {"gpu-h100-0", "gpu-a100-mig-0"}
    steps = dict(run.steps.values_list("name", "status"))
    assert steps["wait_transfer"] == "succeeded" and steps["benchmark"] == "succeeded"

    # The token went into a Secret only: not in run params, outputs, events, values or API answers.
    token = "hf_sEcReT_tOkEn_123"
    assert token not in str(run.params) and token not in str(list(run.steps.values_list("output", "message")))
    assert token not in str(list(run.events.values_list("message", "data")))
    assert token not in str(list(Revision.objects.values_list("values", "manifest")))
    assert token not in str(detail)
    assert Deployment.objects.get(pk=deployment.pk).credentials is None

    workers = api.get(f"/deployments/{deployment.pk}/workers").json()["results"]
    logs = api.get(f"/deployments/{deployment.pk}/workers/{workers[0]['id']}/logs?tail=20")
    assert logs.status_code == 200 and logs.json()["worker"] == workers[0]["name"]

    listing = api.get("/deployments?status=running").json()
    assert [d["id"] for d in listing["results"]] == [deployment.pk]

    # Delete: every object and the namespace go; the record stays as deleted.
    response = api.delete(f"/deployments/{deployment.pk}")
    assert response.status_code == 202
    assert finished(response.json()["run_id"]).status == RunStatus.SUCCEEDED
    deployment.refresh_from_db()
    assert deployment.status == "deleted" and not Worker.objects.filter(deployment=deployment).exists()
    again = api.delete(f"/deployments/{deployment.pk}")
    assert again.status_code == 409 and again.json()["code"] == "already_deleted"
    from clusters.services import gateway_for

    with gateway_for(cluster) as gw:
        assert gw.get_or_none("v1", "Namespace", deployment.namespace) is None
        for kind, api_version in (
            ("Pod", "v1"),
            ("Service", "v1"),
            ("Secret", "v1"),
            ("Deployment", "apps/v1"),
        ):
            leftovers = gw.list(api_version, kind, deployment.namespace)
            assert leftovers == [], f"{kind} left behind"
    assert set(Release.objects.filter(namespace=deployment.namespace).values_list("status", flat=True)) == {
        "uninstalled"
    }
    kinds = list(DeploymentEvent.objects.filter(deployment=deployment).values_list("new_status", flat=True))
    assert "running" in kinds and "deleted" in kinds
    assert Run.objects.filter(subject_id=str(deployment.pk), kind__startswith="deployment.").count() == 2


def _cluster_namespaces(cluster) -> set[str]:
    from clusters.services import gateway_for

    with gateway_for(cluster) as gw:
        return {
            n["metadata"]["name"]
            for n in gw.list("v1", "Namespace")
            if n["metadata"]["name"].startswith("bud-")
        }


def test_model_too_large_is_refused_by_plan_and_deploy_with_per_node_reasons(api, cluster):
    before = _cluster_namespaces(cluster)
    request = {"cluster": "gpu-mixed", "model": "llama-3.1-405b", "context_len": 32768, "concurrency": 64}
    plan = api.post("/deployments/plan", request, format="json")
    assert plan.status_code == 422
    body = plan.json()
    assert body["feasible"] is False and "no placement for llama-3.1-405b" in body["detail"]
    reasons = {r.split(":", 1)[0]: r.split(":", 1)[1] for r in body["refusals"]}
    assert "GiB" in reasons["gpu-h100-0"] and "control-plane-0" in reasons
    assert body["estimate"]["weights_gib"] > 700

    deploy = api.post("/deployments/deploy", {**request, "name": "huge"}, format="json")
    assert deploy.status_code == 422 and deploy.json()["code"] == "no_fit"
    assert deploy.json()["refusals"] == body["refusals"]
    assert deploy.json()["detail"] == body["detail"]
    # Nothing created: no deployment row, no run, no namespace on the cluster.
    assert not Deployment.objects.exists()
    assert not Run.objects.filter(kind__startswith="deployment.").exists()
    assert _cluster_namespaces(cluster) == before


def test_plan_is_a_dry_run_with_manifests_memory_and_time(api, cluster):
    before = _cluster_namespaces(cluster)
    response = api.post(
        "/deployments/plan", {"cluster": cluster.pk, "name": "preview", **LLAMA_8B}, format="json"
    )
    assert response.status_code == 200, response.json()
    plan = response.json()
    assert plan["feasible"] is True
    # Left to choose (device_type auto), placement takes the device with the most memory headroom: the
    # MI300X (192 GiB, model and memory from the AMD labeller) before the H100 (80 GiB).
    assert plan["placement"]["device_type"] == "rocm" and plan["placement"]["tensor_parallel_size"] == 1
    assert 14 < plan["memory"]["weights_gib"] < 16  # 8.03 B parameters x 2 bytes
    assert "kind: Deployment" in plan["manifests"]["runtime"] and "kind: Job" in plan["manifests"]["transfer"]
    assert plan["estimated_total_seconds"] > 0
    assert not Deployment.objects.exists() and _cluster_namespaces(cluster) == before


def test_admin_lists_deployments_and_previews_a_plan(client, admin_user, cluster):
    client.force_login(admin_user)
    changelist = client.get("/admin/deployments/deployment/")
    assert changelist.status_code == 200 and b"Plan a deployment (dry run)" in changelist.content
    page = client.post(
        "/admin/deployments/deployment/plan/",
        {"cluster": cluster.pk, "model": "llama-3.1-8b-instruct", "name": "preview", "device_type": "auto",
         "replicas": 1, "context_len": 4096, "concurrency": 8, "dtype": "auto", "quantization": ""},
    )  # fmt: skip
    assert page.status_code == 200
    assert b"TP 1" in page.content and b"kind: Deployment" in page.content
    refused = client.post(
        "/admin/deployments/deployment/plan/",
        {"cluster": cluster.pk, "model": "llama-3.1-405b", "name": "big", "device_type": "cuda", "replicas": 1,
         "context_len": 4096, "concurrency": 8, "dtype": "auto", "quantization": ""},
    )  # fmt: skip
    assert b"No placement" in refused.content and b"gpu-h100-0:" in refused.content
    assert not Deployment.objects.exists()


def test_health_beat_moves_running_failed_running_with_events_and_workers(api, cluster):
    from clusters.services import gateway_for
    from deployments.health import sweep
    from tests.worker import wait_for

    body = _deploy(api, cluster, "watched")
    assert finished(body["run_id"]).status == RunStatus.SUCCEEDED
    deployment = Deployment.objects.get(pk=body["deployment_id"])

    def scale(replicas: int) -> None:
        with gateway_for(cluster) as gw:
            gw.request(
                "PATCH", f"/apis/apps/v1/namespaces/{deployment.namespace}/deployments/watched/scale",
                body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json",
            )  # fmt: skip

    # Someone scales the runtime to zero behind BudCluster's back: no replica, no answer → failed.
    scale(0)
    wait_for(
        lambda: sweep() and Deployment.objects.get(pk=deployment.pk).status == "failed",
        timeout=20, interval=0.5, what="the health beat to see the deployment failed",
    )  # fmt: skip
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "no replica ready" in deployment.reason
    assert not deployment.workers.exists()

    scale(1)
    wait_for(lambda: sweep() and Deployment.objects.get(pk=deployment.pk).status == "running",
             timeout=20, interval=0.5, what="running again")  # fmt: skip
    assert Worker.objects.filter(deployment=deployment, ready=True).count() == 1
    health = list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="health")
        .order_by("created_at", "id")
        .values_list("old_status", "new_status")
    )
    assert health == [("running", "failed"), ("failed", "running")]
