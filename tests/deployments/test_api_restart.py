"""A deploy whose Kubernetes API server restarts in the middle of a step completes, and the cluster stays available.

The devcluster here keeps its state in a directory (`--state-dir`): stopped and started again on the same port it
comes back with the same CA, token and objects, as a real API server restarting in front of its etcd does.  The
run is held at a step by a failpoint, the API server is stopped, the step is let go and runs into the outage
(synchronised on what the step records, never on time), then the server comes back.  What the user notices: the
run succeeds with nothing created twice, the transfer the cluster was running carries on, and the cluster is
still available (no certificate error: the stored kubeconfig still verifies the server).
"""

from __future__ import annotations

import pytest

from clusters import services as cluster_services
from clusters.models import Revision
from clusters.services import gateway_for
from core import workflow
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from deployments.models import Deployment, DeploymentEvent
from devcluster.sim.config import SimConfig
from devcluster.testing import devcluster_fixture
from tests.conftest import WORKER_ENV
from tests.worker import armed_worker, wait_for

from .conftest import finished, namespace_objects

pytestmark = pytest.mark.django_db(transaction=True)

# The weights transfer Job runs long enough to be caught in the middle by the restart.
SIM = SimConfig(job_duration=5.0)
# This module's `gpu`: the conftest's cluster fixture stores it; a state directory makes restarts keep it.
gpu = devcluster_fixture(name="gpu", nodes="gpu-mixed", scope="module", sim_config=SIM, state_dir=True)

SMALL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}
# Quick retries: the outage lasts as long as the test needs to see the step run into it.
FAST_RETRIES = {**WORKER_ENV, "WORKFLOW_RETRY_DELAY": "0.2", "WORKFLOW_RETRY_MAX_DELAY": "1"}


def _deploy(api, cluster, name: str) -> tuple[Deployment, str]:
    response = api.post("/deployments/deploy", {"cluster": cluster.pk, "name": name, **SMALL}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    return Deployment.objects.get(pk=body["deployment_id"]), body["run_id"]


def _step(run_id: str, name: str) -> RunStep:
    return RunStep.objects.get(run_id=run_id, name=name)


def _assert_deployed_once(run: Run, deployment: Deployment, cluster) -> None:
    assert run.status == RunStatus.SUCCEEDED, run.error
    deployment.refresh_from_db()
    assert deployment.status == "running"
    objects = namespace_objects(cluster, deployment.namespace)
    assert objects["Deployment"] == [deployment.name] and objects["Service"] == [deployment.name]
    assert objects["Job"] == ["model-transfer"] and objects["PersistentVolumeClaim"] == ["model-weights"]
    assert len(objects["ReplicaSet"]) == 1 and len(objects["Pod"]) == 2  # one transfer pod, one worker
    assert Revision.objects.filter(release__namespace=deployment.namespace).count() == 2
    statuses = list(
        DeploymentEvent.objects.filter(deployment=deployment).values_list("new_status", flat=True)
    )
    assert statuses.count("running") == 1


def _assert_cluster_still_available(cluster, run: Run) -> None:
    """The stored kubeconfig still works: no step or event met a certificate error, the health sweep finds the
    cluster available, and a live health check passes."""
    messages = " ".join(run.events.values_list("message", flat=True)) + " ".join(
        run.steps.values_list("message", flat=True)
    )
    assert "certificate" not in messages.lower()
    cluster_services.sweep(cluster_ids=[cluster.pk])
    cluster.refresh_from_db()
    assert cluster.status == "available", cluster.reason
    health = cluster_services.check_health(cluster)
    assert health["healthy"], health


def test_install_running_into_an_api_server_restart_retries_and_the_deploy_succeeds(
    api, cluster, gpu, celery_worker_process
):
    with armed_worker(
        celery_worker_process,
        ["deployment.deploy/install:pause"],
        name="restart-install",
        extra_env=FAST_RETRIES,
    ):
        deployment, run_id = _deploy(api, cluster, "restart-install")
        wait_for(lambda: workflow.failpoint_reached(run_id, "install"), timeout=90, what="install to start")
        gpu.stop()
        try:
            workflow.release_failpoint(run_id, "install")
            wait_for(
                lambda: _step(run_id, "install").transient_failures >= 2,
                timeout=60,
                what="install to fail against the stopped API server",
            )
            install = _step(run_id, "install")
            assert install.status in (StepStatus.WAITING, StepStatus.RUNNING), install.message
        finally:
            gpu.start()
        run = finished(run_id, timeout=120)
    _assert_deployed_once(run, deployment, cluster)
    assert run.events.filter(step="install", message__contains="retrying in").count() >= 2
    assert run.events.filter(step="install", status="succeeded").count() == 1
    _assert_cluster_still_available(cluster, run)


def test_a_transfer_running_when_the_api_server_restarts_completes_and_the_deploy_succeeds(
    api, cluster, gpu, celery_worker_process
):
    with armed_worker(
        celery_worker_process,
        ["deployment.deploy/wait_transfer:pause"],
        name="restart-transfer",
        extra_env=FAST_RETRIES,
    ):
        deployment, run_id = _deploy(api, cluster, "restart-transfer")
        wait_for(
            lambda: workflow.failpoint_reached(run_id, "wait_transfer"),
            timeout=90,
            what="wait_transfer to start",
        )
        deployment.refresh_from_db()
        with gateway_for(cluster) as gw:
            job = gw.get("batch/v1", "Job", "model-transfer", deployment.namespace)
        assert (job.get("status") or {}).get("active") == 1, job.get("status")  # in the middle of its run
        gpu.stop()
        try:
            workflow.release_failpoint(run_id, "wait_transfer")
            wait_for(
                lambda: "not answering" in _step(run_id, "wait_transfer").message,
                timeout=60,
                what="wait_transfer to find the API server gone",
            )
        finally:
            gpu.start()
        run = finished(run_id, timeout=120)
    _assert_deployed_once(run, deployment, cluster)
    with gateway_for(cluster) as gw:
        job = gw.get("batch/v1", "Job", "model-transfer", deployment.namespace)
        progress = gw.get("v1", "ConfigMap", "model-transfer-progress", deployment.namespace)["data"]
    # The pod that was copying when the server went away finished the copy: no second pod, no failure.
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed")
    assert progress["phase"] == "Succeeded" and progress["bytes_done"] == progress["bytes_total"]
    _assert_cluster_still_available(cluster, run)
