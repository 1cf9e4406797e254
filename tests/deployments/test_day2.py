"""Day-2 operations and failure paths: scale, upgrade, rollback, cancel, a killed worker, pods that never start."""

from __future__ import annotations

import pytest

from clusters.models import Revision
from clusters.services import gateway_for
from core.choices import RunStatus, StepStatus
from core.models import Run
from deployments.models import Deployment
from tests.conftest import WORKER_ENV
from tests.worker import kill_worker_during_step, wait_for

from .conftest import SIM, finished

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}


def _deploy(api, cluster, name: str, **extra) -> tuple[Deployment, str]:
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": name, **SMALL, **extra}, format="json"
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    return Deployment.objects.get(pk=body["deployment_id"]), body["run_id"]


def _running(api, cluster, name: str, **extra) -> Deployment:
    deployment, run_id = _deploy(api, cluster, name, **extra)
    run = finished(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    deployment.refresh_from_db()
    return deployment


def _objects(cluster, namespace: str) -> dict[str, list[str]]:
    with gateway_for(cluster) as gw:
        return {
            kind: sorted(o["metadata"]["name"] for o in gw.list(api_version, kind, namespace))
            for kind, api_version in (
                ("Deployment", "apps/v1"), ("Service", "v1"), ("Job", "batch/v1"),
                ("PersistentVolumeClaim", "v1"), ("Pod", "v1"), ("ReplicaSet", "apps/v1"),
            )
        }  # fmt: skip


def test_scale_upgrade_and_rollback_create_revisions(api, cluster):
    deployment = _running(api, cluster, "day2")

    # Scale 1 → 3: three ready workers.
    response = api.patch(f"/deployments/{deployment.pk}", {"replicas": 3}, format="json")
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    workers = api.get(f"/deployments/{deployment.pk}/workers").json()
    assert len(workers) == 3 and all(w["ready"] for w in workers)
    detail = api.get(f"/deployments/{deployment.pk}").json()
    assert (detail["replicas"], detail["ready_replicas"], detail["revision"]) == (3, 3, 2)

    # New engine args: a new revision rolled out with the flag in the pods' arguments.
    response = api.patch(
        f"/deployments/{deployment.pk}", {"engine_args": ["--enable-prefix-caching"]}, format="json"
    )
    assert response.status_code == 202
    assert finished(response.json()["run_id"]).status == RunStatus.SUCCEEDED
    with gateway_for(cluster) as gw:
        dep = gw.get("apps/v1", "Deployment", "day2", deployment.namespace)
    assert "--enable-prefix-caching" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

    # Roll back to revision 1: re-applied as revision 4 (helm-style), one replica, no flag.
    response = api.post(f"/deployments/{deployment.pk}/rollback", {"revision": 1}, format="json")
    assert response.status_code == 202
    assert finished(response.json()["run_id"]).status == RunStatus.SUCCEEDED
    detail = api.get(f"/deployments/{deployment.pk}").json()
    assert [r["number"] for r in detail["revisions"]] == [4, 3, 2, 1]
    assert detail["revisions"][0]["description"] == "rollback to 1"
    assert detail["revisions"][0]["values"] == detail["revisions"][3]["values"]
    assert (detail["replicas"], detail["engine_args"], detail["status"]) == (1, [], "running")
    with gateway_for(cluster) as gw:
        dep = gw.get("apps/v1", "Deployment", "day2", deployment.namespace)
    assert "--enable-prefix-caching" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["spec"]["replicas"] == 1
    missing = api.post(f"/deployments/{deployment.pk}/rollback", {"revision": 9}, format="json")
    assert missing.status_code == 404 and missing.json()["code"] == "no_such_revision"
    unchanged = api.patch(f"/deployments/{deployment.pk}", {"replicas": 1}, format="json")
    assert unchanged.status_code == 400 and unchanged.json()["code"] == "nothing_to_change"


def test_cancel_during_transfer_cleans_up(api, cluster):
    SIM.job_duration = 60.0  # a slow copy, so the run is still transferring when it is cancelled
    try:
        deployment, run_id = _deploy(api, cluster, "cancelled")
        run = Run.objects.get(pk=run_id)
        wait_for(
            lambda: run.steps.filter(name="wait_transfer", status=StepStatus.WAITING).exists(),
            timeout=30,
            what="the transfer to be under way",
        )
        step = run.steps.get(name="wait_transfer")
        assert "GiB copied" in step.message
        assert api.post(f"/runs/{run_id}/cancel", {}, format="json").status_code == 202
        run = finished(run_id)
    finally:
        SIM.job_duration = 1.5
    assert run.status == RunStatus.CANCELLED
    assert dict(run.steps.values_list("name", "status"))["cleanup_resources"] == "succeeded"
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "cancel" in deployment.reason
    with gateway_for(cluster) as gw:
        wait_for(
            lambda: gw.get_or_none("v1", "Namespace", deployment.namespace) is None,
            timeout=15,
            what="the namespace to be gone",
        )
        assert gw.list("batch/v1", "Job", deployment.namespace) == []


def test_pods_that_cannot_pull_fail_with_the_reason_verbatim(api, cluster):
    deployment, run_id = _deploy(
        api,
        cluster,
        "badimage",
        image="vllm/vllm-openai:does-not-exist",
        ready_timeout=4,
        keep_on_failure=True,
    )
    run = finished(run_id)
    assert run.status == RunStatus.FAILED
    wait_ready = run.steps.get(name="wait_ready")
    assert wait_ready.status == StepStatus.FAILED
    assert "ImagePullBackOff" in wait_ready.message or "ErrImagePull" in wait_ready.message
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "ImagePull" in deployment.reason
    # keep_on_failure: the namespace stays for inspection, the workers show why.
    assert _objects(cluster, deployment.namespace)["Deployment"] == ["badimage"]
    assert "ImagePull" in deployment.workers.get().reason


def test_worker_killed_during_install_run_completes_once_without_duplicates(
    api, cluster, celery_worker_process
):
    deployment, run = kill_worker_during_step(
        celery_worker_process, lambda: _deploy(api, cluster, "killed"), "install", name="deploy",
        extra_env=WORKER_ENV,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.resumed_count >= 1
    assert run.events.filter(status="succeeded", step="").count() == 1
    deployment.refresh_from_db()
    assert deployment.status == "running"
    objects = _objects(cluster, deployment.namespace)
    assert objects["Deployment"] == ["killed"] and objects["Service"] == ["killed"]
    assert objects["Job"] == ["model-transfer"] and objects["PersistentVolumeClaim"] == ["model-weights"]
    assert len(objects["ReplicaSet"]) == 1 and len(objects["Pod"]) == 2  # one runtime pod, one transfer pod
    assert (
        Revision.objects.filter(release__namespace=deployment.namespace, release__name="killed").count() == 1
    )
