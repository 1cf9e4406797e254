"""Day-2 operations and failure paths: scale, upgrade, rollback, cancel, a killed worker, pods that never start,
an API server out for a while."""

from __future__ import annotations

import pytest

from clusters.models import Revision
from clusters.services import gateway_for
from core import workflow
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from deployments.models import Deployment, DeploymentEvent
from tests.conftest import WORKER_ENV
from tests.worker import armed_worker, crash_inside_each_step, kill_worker_during_step, wait_for

from .conftest import SIM, finished, namespace_objects

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


def test_scale_upgrade_and_rollback_create_revisions(api, cluster):
    deployment = _running(api, cluster, "day2")

    # Scale 1 → 3: three ready workers.
    response = api.patch(f"/deployments/{deployment.pk}", {"replicas": 3}, format="json")
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    workers = api.get(f"/deployments/{deployment.pk}/workers").json()["results"]
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
    assert missing.status_code == 409 and missing.json()["code"] == "no_such_revision"
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
    assert namespace_objects(cluster, deployment.namespace)["Deployment"] == ["badimage"]
    assert "ImagePull" in deployment.workers.get().reason


def test_worker_killed_during_install_run_completes_once_without_duplicates(
    api, cluster, celery_worker_process
):
    # The worker dies inside install (its failpoint: after the runtime was applied, before the step's success
    # was recorded), so the resumed install meets everything it already created.
    deployment, run = kill_worker_during_step(
        celery_worker_process, lambda: _deploy(api, cluster, "killed"), "install", name="deploy",
        extra_env=WORKER_ENV,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.resumed_count >= 1
    assert run.events.filter(status="succeeded", step="").count() == 1
    deployment.refresh_from_db()
    assert deployment.status == "running"
    objects = namespace_objects(cluster, deployment.namespace)
    assert objects["Deployment"] == ["killed"] and objects["Service"] == ["killed"]
    assert objects["Job"] == ["model-transfer"] and objects["PersistentVolumeClaim"] == ["model-weights"]
    assert len(objects["ReplicaSet"]) == 1 and len(objects["Pod"]) == 2  # one runtime pod, one transfer pod
    assert (
        Revision.objects.filter(release__namespace=deployment.namespace, release__name="killed").count() == 1
    )


def test_cancelled_pending_delete_leaves_deleting_and_can_be_repeated(api, cluster, celery_worker_process):
    deployment = _running(api, cluster, "undeleted")
    celery_worker_process.stop()  # nobody takes the delete run: it stays pending
    try:
        response = api.delete(f"/deployments/{deployment.pk}")
        assert response.status_code == 202, response.json()
        run_id = response.json()["run_id"]
        assert api.post(f"/runs/{run_id}/cancel", {}, format="json").status_code == 202
    finally:
        celery_worker_process.start()
    run = finished(run_id)
    assert run.status == RunStatus.CANCELLED
    assert run.steps.get(name="delete_failed").status == StepStatus.SUCCEEDED
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "cancel" in deployment.reason
    # Nothing was removed.
    assert namespace_objects(cluster, deployment.namespace)["Deployment"] == ["undeleted"]

    again = api.delete(f"/deployments/{deployment.pk}")
    assert again.status_code == 202, again.json()
    assert finished(again.json()["run_id"]).status == RunStatus.SUCCEEDED
    deployment.refresh_from_db()
    assert deployment.status == "deleted"
    with gateway_for(cluster) as gw:
        assert gw.get_or_none("v1", "Namespace", deployment.namespace) is None


def test_api_server_out_for_a_while_during_install_is_waited_out(api, cluster, gpu, celery_worker_process):
    """Connections reset for longer than the old three quick attempts lasted: install keeps retrying with
    backoff (short delays here) within the transient window, and the deploy succeeds once the server is back."""
    fast_retries = {**WORKER_ENV, "WORKFLOW_RETRY_DELAY": "0.2", "WORKFLOW_RETRY_MAX_DELAY": "1"}
    with armed_worker(
        celery_worker_process, ["deployment.deploy/install:pause"], name="outage", extra_env=fast_retries
    ):
        deployment, run_id = _deploy(api, cluster, "outage")
        wait_for(lambda: workflow.failpoint_reached(run_id, "install"), timeout=60, what="install to start")
        gpu.set_fault(gpu.names[0], "unreachable", delay=0.05)
        try:
            workflow.release_failpoint(run_id, "install")
            wait_for(
                lambda: RunStep.objects.get(run_id=run_id, name="install").transient_failures >= 5,
                timeout=60,
                what="install to fail five times in a row",
            )
            install = RunStep.objects.get(run_id=run_id, name="install")
            assert install.status in (StepStatus.WAITING, StepStatus.RUNNING), install.message
        finally:
            gpu.set_fault(gpu.names[0], "clear")
        run = finished(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    retries = run.events.filter(step="install", message__contains="retrying in")
    assert retries.count() >= 5
    deployment.refresh_from_db()
    assert deployment.status == "running"


DEPLOY_STEPS = [
    "verify_cluster", "place", "namespace", "secrets", "transfer", "wait_transfer", "install", "wait_ready",
    "verify_endpoint", "mark_running",
]  # fmt: skip
DELETE_STEPS = ["remove_objects", "wait_namespace_gone", "mark_deleted"]


def _one_succeeded_event_per_step(run: Run) -> None:
    for step in run.steps.filter(phase="main"):
        assert run.events.filter(step=step.name, status="succeeded").count() == 1, step.name
    assert run.events.filter(step="", status="succeeded").count() == 1


def test_fault_matrix_deploy_and_delete_survive_a_kill_inside_every_step(api, cluster, celery_worker_process):
    """The fault matrix's subset in the suite (benchmarks/fault_matrix.py runs every workflow): a worker is
    SIGKILLed inside each step of a deploy and of its deletion, after the step's body did its work and before
    the step's outcome was recorded. Every run still succeeds, with nothing created twice."""
    deployment, run, kills = crash_inside_each_step(
        celery_worker_process, lambda: _deploy(api, cluster, "matrix"), DEPLOY_STEPS, name="deploy",
        extra_env=WORKER_ENV,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert kills == len(DEPLOY_STEPS) and run.resumed_count >= len(DEPLOY_STEPS)
    for step in DEPLOY_STEPS:  # killed once inside each, each then resumed on a new worker
        assert run.events.filter(step=step, status="failpoint").count() == 1, step
        assert run.events.filter(step=step, message__contains="resumed on a new worker").count() == 1, step
    _one_succeeded_event_per_step(run)
    objects = namespace_objects(cluster, deployment.namespace)
    assert objects["Deployment"] == ["matrix"] and objects["Service"] == ["matrix"]
    assert objects["Job"] == ["model-transfer"] and objects["PersistentVolumeClaim"] == ["model-weights"]
    assert len(objects["ReplicaSet"]) == 1 and len(objects["Pod"]) == 2
    assert Revision.objects.filter(release__namespace=deployment.namespace).count() == 2  # runtime + transfer
    events = list(DeploymentEvent.objects.filter(deployment=deployment).values_list("new_status", flat=True))
    assert events.count("running") == 1 and events.count("deploying") == 1

    deployment, run, kills = crash_inside_each_step(
        celery_worker_process, lambda: (deployment, api.delete(f"/deployments/{deployment.pk}").json()["run_id"]),
        DELETE_STEPS, name="delete", extra_env=WORKER_ENV,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert kills == len(DELETE_STEPS)
    _one_succeeded_event_per_step(run)
    deployment.refresh_from_db()
    assert deployment.status == "deleted"
    with gateway_for(cluster) as gw:
        assert gw.get_or_none("v1", "Namespace", deployment.namespace) is None
