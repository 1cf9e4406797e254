"""Findings of the fault run that need a cluster (the gpu-mixed devcluster of the deployment tests):

* cluster deletion killed after the releases were marked uninstalled and before the namespaces were deleted
  (``teardown.uninstalled``): the rerun still deletes the namespace and the HF token Secret;
* a deploy's cleanup meets an unreachable cluster: it is retried like any step, and once the transient window is
  over the pending-cleanup beat finishes it when the cluster is available again;
* a waiting step's check against a cluster that does not answer ends at ``WORKFLOW_POLL_CHECK_DEADLINE``, not
  after the 30 s a single call may take.
"""

# The devcluster fixtures are imported from the deployment tests; test arguments named after them are those fixtures.
# ruff: noqa: F811

from __future__ import annotations

import pytest

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core import workflow
from core.choices import RunStatus, StepStatus
from core.gateway import NotFound
from core.models import Run, RunStep
from deployments import workflows as deploy_workflows
from deployments.charts import HF_SECRET
from deployments.models import Deployment
from tests.conftest import WORKER_ENV
from tests.deployments.conftest import (  # noqa: F401 - fixtures, registered by importing them
    _gateway,
    cluster,
    finished,
    gpu,
    gpu_baseline,
    gpu_reset,
)
from tests.worker import armed_worker, kill_worker_during_step, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8, "hf_token": "hf_test_token"}


def _deploy(api, cluster, name: str) -> tuple[Deployment, str]:
    response = api.post("/deployments/deploy", {"cluster": cluster.pk, "name": name, **SMALL}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    return Deployment.objects.get(pk=body["deployment_id"]), body["run_id"]


def _gone(dc, namespace: str) -> bool:
    """The namespace and its HF token Secret are gone from the devcluster (not merely terminating)."""
    with _gateway(dc) as gw:
        for args in (("v1", "Secret", HF_SECRET, namespace), ("v1", "Namespace", namespace)):
            try:
                gw.get(*args)
            except NotFound:
                continue
            return False
    return True


def _present(dc, namespace: str) -> bool:
    with _gateway(dc) as gw:
        return bool(gw.get("v1", "Secret", HF_SECRET, namespace)) and bool(
            gw.get("v1", "Namespace", namespace)
        )


# --- item 1 ------------------------------------------------------------------------------------------------------


def test_cluster_deletion_killed_between_uninstall_and_namespaces_leaves_nothing_behind(
    api, cluster, gpu, celery_worker_process
):
    deployment, run_id = _deploy(api, cluster, "leak")
    assert finished(run_id).status == RunStatus.SUCCEEDED
    assert _present(gpu, deployment.namespace)

    def delete():
        response = api.delete(f"/clusters/{cluster.pk}?force=true")
        assert response.status_code == 202, response.json()
        return cluster, response.json()["run_id"]

    _, run = kill_worker_during_step(
        celery_worker_process, delete, "teardown.uninstalled", name="teardown", extra_env=WORKER_ENV,
        action="crash", timeout=90,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    teardown = run.steps.get(name="teardown")
    assert teardown.attempt == 2 and deployment.namespace in teardown.output["namespaces"]
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    wait_for(lambda: _gone(gpu, deployment.namespace), timeout=60, what=f"{deployment.namespace} gone")


# --- item 3 ------------------------------------------------------------------------------------------------------


def _cancel_during_an_outage(api, cluster, gpu, name: str) -> tuple[Deployment, str]:
    """A deploy held before its transfer (namespace and Secrets created), the cluster answering 503 to
    everything, then cancelled: its cleanup meets the outage."""
    deployment, run_id = _deploy(api, cluster, name)
    wait_for(lambda: workflow.failpoint_reached(run_id, "transfer"), timeout=60, what="the transfer step")
    assert _present(gpu, deployment.namespace)
    gpu.set_fault(gpu.names[0], "error")
    workflow.request_cancel(Run.objects.get(pk=run_id), reason="stopped by the test")
    workflow.release_failpoint(run_id, "transfer")
    return deployment, run_id


def _cleanup_step(run_id) -> RunStep:
    return RunStep.objects.get(run_id=run_id, name="cleanup_resources")


def test_deploy_cleanup_waits_out_an_unreachable_cluster(api, cluster, gpu, celery_worker_process):
    with armed_worker(
        celery_worker_process, ["deployment.deploy/transfer:pause"], name="cleanup", extra_env=WORKER_ENV
    ):
        deployment, run_id = _cancel_during_an_outage(api, cluster, gpu, "orphan")
        wait_for(
            lambda: _cleanup_step(run_id).transient_failures >= 1,
            timeout=60,
            what="cleanup to meet the outage",
        )
        assert _cleanup_step(run_id).status in (StepStatus.WAITING, StepStatus.RUNNING)
        gpu.set_fault(gpu.names[0], "clear")
        run = finished(run_id, timeout=90)
    assert run.status == RunStatus.CANCELLED
    assert _cleanup_step(run_id).status == StepStatus.SUCCEEDED, _cleanup_step(run_id).message
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    wait_for(lambda: _gone(gpu, deployment.namespace), timeout=60, what=f"{deployment.namespace} gone")


def test_a_cleanup_given_up_is_finished_when_the_cluster_is_back(api, cluster, gpu, celery_worker_process):
    env = {**WORKER_ENV, "WORKFLOW_TRANSIENT_WINDOW": "1"}
    with armed_worker(
        celery_worker_process, ["deployment.deploy/transfer:pause"], name="giveup", extra_env=env
    ):
        deployment, run_id = _cancel_during_an_outage(api, cluster, gpu, "leftover")
        run = finished(run_id, timeout=60)
    assert run.status == RunStatus.CANCELLED
    assert _cleanup_step(run_id).status == StepStatus.FAILED
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    gpu.set_fault(gpu.names[0], "clear")
    assert _present(gpu, deployment.namespace)  # left behind, for now

    # While the cluster is not available, nothing is tried; once the sweep says it is, a cleanup run starts.
    Cluster.objects.filter(pk=cluster.pk).update(status=ClusterStatus.NOT_AVAILABLE)
    assert deploy_workflows.finish_pending_cleanups() == []
    Cluster.objects.filter(pk=cluster.pk).update(status=ClusterStatus.AVAILABLE)
    assert deploy_workflows.finish_pending_cleanups() == [deployment.pk]
    assert deploy_workflows.finish_pending_cleanups() == []  # one cleanup run at a time
    cleanup = Run.objects.get(kind=deploy_workflows.CLEANUP_KIND, subject_id=str(deployment.pk))
    assert finished(cleanup.pk).status == RunStatus.SUCCEEDED, finished(cleanup.pk).error
    wait_for(lambda: _gone(gpu, deployment.namespace), timeout=60, what=f"{deployment.namespace} gone")
    deployment.refresh_from_db()
    assert deployment.status == "failed"  # still the failed deploy it was, now without leftovers
    assert deployment.events.filter(
        kind="cleanup", message__contains="removed what the failed deploy"
    ).exists()
    assert deploy_workflows.finish_pending_cleanups() == []  # done: never again


# --- item 4 ------------------------------------------------------------------------------------------------------


def test_a_check_of_a_hung_cluster_ends_at_the_poll_check_deadline(api, cluster, gpu, celery_worker_process):
    env = {**WORKER_ENV, "WORKFLOW_POLL_CHECK_DEADLINE": "1"}
    with armed_worker(
        celery_worker_process, ["deployment.deploy/wait_ready:pause"], name="hung", extra_env=env
    ):
        _, run_id = _deploy(api, cluster, "patient")
        wait_for(lambda: workflow.failpoint_reached(run_id, "wait_ready"), timeout=60, what="wait_ready")
        gpu.set_fault(gpu.names[0], "unreachable")  # requests are held unanswered
        try:
            workflow.release_failpoint(run_id, "wait_ready")
            step = wait_for(
                lambda: RunStep.objects.filter(
                    run_id=run_id, name="wait_ready", message__contains="allowed for this check"
                ).first(),
                timeout=20,
                what="a check cut off at the poll check deadline",
            )
            assert step.message.startswith("cluster not answering")
        finally:
            gpu.set_fault(gpu.names[0], "clear")
        run = finished(run_id, timeout=90)
    assert run.status == RunStatus.SUCCEEDED, run.error
