"""Deployment rules the API states: a name is one live deployment per cluster (and the migration that brings the
rule refuses existing duplicates, listing them), a state that does not exist is a 409 not a 404 (a rollback to a
missing revision, approving a run that is not a provisioning run), a plan on a cluster that is not available says so,
and a plan takes a deploy body as it is."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from clusters.choices import ClusterStatus
from core.models import Run
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from tests.api.conftest import _broker_at
from tests.contract.conftest import gpu_node, running_deployment, unreachable_cluster

MODEL = "llama-3.1-8b-instruct"


@pytest.fixture
def memory_broker():
    with _broker_at("memory://"):
        yield


def _deploy(api, cluster: str, name: str):
    return api.post("/deployments/deploy", {"cluster": cluster, "name": name, "model": MODEL}, format="json")


@pytest.mark.django_db
def test_a_name_is_one_live_deployment_per_cluster(api, loopback, memory_broker):
    one, two = unreachable_cluster("one"), unreachable_cluster("two")
    gpu_node(one, "gpu-a")
    gpu_node(two, "gpu-b")
    first = _deploy(api, "one", "llama")
    assert first.status_code == 202, first.json()
    again = _deploy(api, "one", "llama")
    assert again.status_code == 409
    answer = again.json()
    assert answer["code"] == "name_taken" and answer["deployment_id"] == first.json()["deployment_id"]
    assert "already has a deployment named 'llama'" in answer["detail"]
    assert Deployment.objects.filter(name="llama").count() == 1 and Run.objects.count() == 1
    # Another cluster may use the name; a deleted deployment frees it.
    assert _deploy(api, "two", "llama").status_code == 202
    Deployment.objects.filter(pk=first.json()["deployment_id"]).update(status=DeploymentStatus.DELETED)
    assert _deploy(api, "one", "llama").status_code == 202
    # The database holds the rule too (two requests racing past the service's check).
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(name="llama", cluster=one, namespace="bud-llama-race")


@pytest.mark.django_db(transaction=True)
def test_the_migration_refuses_existing_duplicates_and_lists_them():
    executor = MigrationExecutor(connection)
    before = [("deployments", "0005_runtime_values_engine_args")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    try:
        cluster = old.get_model("clusters", "Cluster").objects.create(
            name="c1", server_url="https://10.0.0.1"
        )
        OldDeployment = old.get_model("deployments", "Deployment")
        for namespace, status in (("bud-a-1", "running"), ("bud-a-2", "failed"), ("bud-a-3", "deleted")):
            OldDeployment.objects.create(name="a", cluster=cluster, namespace=namespace, status=status)
        executor.loader.build_graph()
        with pytest.raises(RuntimeError) as refused:
            executor.migrate([("deployments", "0006_deployment_unique_live_name")])
        message = str(refused.value)
        assert f"cluster {cluster.pk}, name 'a'" in message and "(running" in message and "(failed" in message
        assert "(deleted" not in message and "DELETE /deployments/{id}" in message
        # Resolved as the message says (the extra one deleted), the migration applies.
        OldDeployment.objects.filter(namespace="bud-a-2").update(status="deleted")
        executor.loader.build_graph()
        executor.migrate([("deployments", "0006_deployment_unique_live_name")])
    finally:
        OldDeployment.objects.all().delete()
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db
def test_a_rollback_to_a_revision_that_does_not_exist_is_a_conflict(api, loopback):
    deployment = running_deployment(unreachable_cluster("c1"))
    response = api.post(f"/deployments/{deployment.pk}/rollback", {"revision": 7}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "no_such_revision"
    assert "its revisions are 1" in response.json()["detail"]
    assert api.post("/deployments/999999/rollback", {"revision": 1}, format="json").status_code == 404
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_approving_a_run_that_is_not_a_provisioning_run_is_a_conflict(api, loopback):
    deployment = running_deployment(unreachable_cluster("c1"))
    run = Run.objects.create(kind="deployment.deploy", subject=deployment, status="running")
    response = api.post(f"/runs/{run.pk}/approve")
    assert response.status_code == 409 and response.json()["code"] == "not_awaiting_approval"
    missing = api.post("/runs/00000000-0000-4000-8000-000000000000/approve")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


@pytest.mark.django_db
def test_a_plan_on_a_cluster_that_is_not_available_warns(api, loopback):
    cluster = unreachable_cluster("c1")
    gpu_node(cluster, "gpu-a")
    body = {"cluster": "c1", "model": MODEL}
    available = api.post("/deployments/plan", body, format="json")
    assert available.status_code == 200 and available.json()["warnings"] == []
    cluster.status, cluster.reason = ClusterStatus.NOT_AVAILABLE, "api server not answering"
    cluster.save()
    planned = api.post("/deployments/plan", body, format="json")
    assert planned.status_code == 200 and planned.json()["feasible"]
    [warning] = planned.json()["warnings"]
    assert "c1 is not_available" in warning and "api server not answering" in warning
    assert "deploy is refused" in warning
    # Fits nowhere: the refusal carries the warning as well.
    fits_nowhere = api.post("/deployments/plan", {**body, "replicas": 200}, format="json")
    assert fits_nowhere.status_code == 422 and fits_nowhere.json()["code"] == "no_fit"
    assert fits_nowhere.json()["warnings"] == [warning]


@pytest.mark.django_db
def test_a_plan_takes_a_deploy_body_as_it_is_and_keeps_no_credential(api, loopback):
    gpu_node(unreachable_cluster("c1"), "gpu-a")
    body = {
        "cluster": "c1", "name": "llama", "model": MODEL, "hf_token": "hf_PlanSecret123", "keep_on_failure": True,
        "ready_timeout": 600, "benchmark": {"requests": 10, "concurrency": 2},
    }  # fmt: skip
    response = api.post("/deployments/plan", body, format="json")
    assert response.status_code == 200, response.json()
    answer = response.json()
    assert "hf_PlanSecret123" not in response.content.decode()
    assert answer["estimated_seconds"]["benchmark"] > 0  # the benchmark the deploy would run is estimated
    assert "hf-token" in str(answer["manifests"]["runtime"])  # the runtime reads the token from its Secret
    assert not Deployment.objects.exists() and not Run.objects.exists()
