"""A run cancelled before any worker started it still runs its cleanup, so its subject never stays stuck in the
in-between state the request put it in (a cluster `deleting`, a registration `registering`). The worker is
stopped while the request and the cancel are made, which is how a run stays pending in real life (workers busy
or down)."""

from __future__ import annotations

import pytest

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus, StepStatus
from tests.worker import run_finished

from .conftest import store_cluster

pytestmark = pytest.mark.django_db(transaction=True)


def _cancel_while_pending(api, worker, request) -> str:
    worker.stop()
    try:
        response = request()
        assert response.status_code == 202, response.json()
        run_id = response.json()["run_id"]
        cancel = api.post(f"/runs/{run_id}/cancel", {"reason": "changed my mind"}, format="json")
        assert cancel.status_code == 202, cancel.json()
    finally:
        worker.start()
    return run_id


def test_cancelled_pending_cluster_deletion_leaves_deleting_and_can_be_repeated(api, worker, lifecycle_dc):
    cluster = store_cluster(lifecycle_dc)
    run_id = _cancel_while_pending(api, worker, lambda: api.delete(f"/clusters/{cluster.pk}?force=true"))

    run = run_finished(run_id)
    assert run.status == RunStatus.CANCELLED
    assert run.steps.get(name="deletion_failed").status == StepStatus.SUCCEEDED
    assert not run.steps.filter(phase="main", status=StepStatus.SUCCEEDED).exists()
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ERROR and "changed my mind" in cluster.reason

    again = api.delete(f"/clusters/{cluster.pk}?force=true")
    assert again.status_code == 202, again.json()
    assert run_finished(again.json()["run_id"], timeout=90).status == RunStatus.SUCCEEDED
    assert not Cluster.objects.filter(pk=cluster.pk).exists()


def test_cancelled_pending_registration_leaves_registering(api, worker, lifecycle_dc):
    kubeconfig = lifecycle_dc.kubeconfig_yaml()
    run_id = _cancel_while_pending(
        api,
        worker,
        lambda: api.post("/clusters/register", {"name": "halted", "kubeconfig": kubeconfig}, format="json"),
    )

    run = run_finished(run_id)
    assert run.status == RunStatus.CANCELLED
    assert run.steps.get(name="mark_error").status == StepStatus.SUCCEEDED
    cluster = Cluster.objects.get(name="halted")
    assert cluster.status == ClusterStatus.ERROR and "changed my mind" in cluster.reason
    # The server is free again: a new registration would replace the record the cancelled one left.
    assert services.find_duplicate(cluster.server_url) == (cluster, True)


def test_a_cluster_left_deleting_without_a_deletion_run_can_be_deleted(api, worker, lifecycle_dc):
    """Whatever left it there (a run that ended without its cleanup, an old bug), `deleting` is not a trap."""
    cluster = store_cluster(lifecycle_dc, status=ClusterStatus.DELETING)
    response = api.delete(f"/clusters/{cluster.pk}?force=true")
    assert response.status_code == 202, response.json()
    # While that deletion runs, another one is refused.
    busy = api.delete(f"/clusters/{cluster.pk}?force=true")
    assert busy.status_code == 409 and busy.json()["code"] == "already_deleting"
    api.post(f"/runs/{response.json()['run_id']}/cancel", {}, format="json")
