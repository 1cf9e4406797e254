"""Status writes are compare-and-set: a periodic check never writes its (older) verdict over a status that a
user or a run wrote while it was probing. The probe is replaced by one that performs the concurrent write, so the
race happens at exactly that point, every time."""

from __future__ import annotations

import pytest

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster, ClusterEvent
from deployments import health
from deployments import services as deployment_services
from deployments.choices import DeploymentStatus
from deployments.models import Deployment, DeploymentEvent

from .conftest import store_cluster

pytestmark = pytest.mark.django_db(transaction=True)


def test_cluster_sweep_keeps_a_status_written_while_it_probed(lifecycle_dc, monkeypatch):
    deleting = store_cluster(lifecycle_dc, "being-deleted")
    reverifying = store_cluster(lifecycle_dc, "being-reverified")
    idle = store_cluster(lifecycle_dc, "idle")
    meanwhile = {
        deleting.pk: (ClusterStatus.DELETING, "deletion requested"),
        reverifying.pk: (ClusterStatus.REGISTERING, "re-verification requested"),
    }

    def probe_while_others_write(clusters, timeout, workers, deadline):
        for pk, (status, reason) in meanwhile.items():
            cluster_services.set_status(Cluster.objects.get(pk=pk), status, reason)
        return {c.pk: (False, "cannot connect: connection refused") for c in clusters}

    monkeypatch.setattr(cluster_services, "_probe_all", probe_while_others_write)
    report = cluster_services.sweep(cluster_ids=[deleting.pk, reverifying.pk, idle.pk])

    statuses = dict(Cluster.objects.values_list("name", "status"))
    assert statuses == {
        "being-deleted": ClusterStatus.DELETING,
        "being-reverified": ClusterStatus.REGISTERING,
        "idle": ClusterStatus.NOT_AVAILABLE,
    }
    assert report.transitions == [("idle", "available", "not_available")]
    assert not ClusterEvent.objects.filter(kind="health").exclude(cluster=idle).exists()


def _running_deployment(cluster) -> Deployment:
    return Deployment.objects.create(
        name="racy", cluster=cluster, namespace="bud-racy-00000000", model_name="m", replicas=1,
        status=DeploymentStatus.RUNNING, endpoint_url="http://203.0.113.7", ready_replicas=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "meanwhile",
    [
        pytest.param("delete", id="a delete request"),
        pytest.param("update", id="an update that ended running again"),
    ],
)
def test_deployment_health_keeps_a_status_written_while_it_probed(lifecycle_dc, monkeypatch, meanwhile):
    deployment = _running_deployment(store_cluster(lifecycle_dc))

    def readiness_while_others_write(gw, dep):
        current = Deployment.objects.get(pk=dep.pk)
        if meanwhile == "delete":
            deployment_services.set_status(
                current, DeploymentStatus.DELETING, "deletion requested", kind="delete"
            )
        else:  # a scale-up rolled out and finished while the probe saw the old pods going
            deployment_services.begin_change(current, "Update racy: replicas=2", kind="update")
            deployment_services.finish_change(current)
        return health.Readiness(desired=1, ready=0, updated=0, workers=[], problems=["pods going"])

    monkeypatch.setattr(health, "readiness", readiness_while_others_write)
    outcome = health.check_health(deployment)

    deployment.refresh_from_db()
    expected = DeploymentStatus.DELETING if meanwhile == "delete" else DeploymentStatus.RUNNING
    assert deployment.status == expected, deployment.reason
    assert outcome.get("skipped") == "status changed meanwhile"
    assert not DeploymentEvent.objects.filter(deployment=deployment, kind="health").exists()


def test_a_failed_deploy_run_does_not_overwrite_a_deletion(lifecycle_dc, monkeypatch):
    """The deploy run's cleanup read the deployment (deploying) just before a delete request came in."""
    deployment = _running_deployment(store_cluster(lifecycle_dc))
    Deployment.objects.filter(pk=deployment.pk).update(status=DeploymentStatus.DEPLOYING)
    seen = Deployment.objects.get(pk=deployment.pk)

    def read_then_deleted(pk):
        deployment_services.set_status(
            Deployment.objects.get(pk=pk), DeploymentStatus.DELETING, "deletion requested", kind="delete"
        )
        return seen  # what the cleanup had read

    monkeypatch.setattr(deployment_services, "_not_deleted", read_then_deleted)
    outcome = deployment_services.deploy_failed(deployment.pk, error="install failed", cancelled=False)

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.DELETING
    assert "skipped" in outcome
