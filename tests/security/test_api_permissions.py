"""API answers follow the view permission, and permission is checked before any lookup (issue 14, item 6)."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core import workflow
from deployments.choices import DeploymentStatus
from deployments.models import Benchmark, Deployment
from provisioning.models import CloudCredential

from .conftest import api_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def objects():
    cluster = Cluster.objects.create(name="prod-1", status=ClusterStatus.AVAILABLE, server_url="https://k8s")
    deployment = Deployment.objects.create(
        name="llama", cluster=cluster, namespace="bud-llama-1", model_name="llama-3.1-8b-instruct",
        status=DeploymentStatus.RUNNING,
    )  # fmt: skip
    benchmark = Benchmark.objects.create(deployment=deployment)
    credential = CloudCredential.objects.create(
        name="aws-1", provider="aws", secret={"access_key_id": "AKIA", "secret_access_key": "s"}
    )
    run = workflow.get_workflow("demo.chain").launch(params={})
    return {
        "cluster": cluster.pk, "deployment": deployment.pk, "benchmark": benchmark.pk,
        "credential": credential.pk, "run": run.pk,
    }  # fmt: skip


# Every operation on one object, by the object it names. A user without the permission gets 403 whether the
# object exists or not: the answer tells nothing about which ids exist.
OPERATIONS = [
    ("get", "/runs/{run}"),
    ("post", "/runs/{run}/cancel"),
    ("post", "/runs/{run}/approve"),
    ("get", "/clusters/{cluster}"),
    ("patch", "/clusters/{cluster}"),
    ("delete", "/clusters/{cluster}"),
    ("get", "/clusters/{cluster}/health"),
    ("get", "/clusters/{cluster}/events"),
    ("get", "/clusters/{cluster}/nodes"),
    ("get", "/clusters/{cluster}/device-info"),
    ("post", "/clusters/{cluster}/collect-node-info"),
    ("get", "/clusters/{cluster}/provision"),
    ("post", "/clusters/{cluster}/provision"),
    ("get", "/deployments/{deployment}"),
    ("patch", "/deployments/{deployment}"),
    ("delete", "/deployments/{deployment}"),
    ("post", "/deployments/{deployment}/rollback"),
    ("get", "/deployments/{deployment}/workers"),
    ("get", "/deployments/{deployment}/workers/1/logs"),
    ("post", "/deployments/{deployment}/benchmark"),
    ("get", "/benchmarks/{benchmark}"),
    ("get", "/benchmarks/{benchmark}/plots/ttft.png"),
    ("get", "/credentials/{credential}"),
    ("delete", "/credentials/{credential}"),
]
MISSING = {"run": uuid.UUID(int=1), "cluster": 999, "deployment": 999, "benchmark": 999, "credential": 999}


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_permission_is_403_for_existing_and_missing_ids_alike(make_user, objects, method, path):
    client = api_client(make_user("nobody"))
    existing = getattr(client, method)(path.format(**objects), {}, format="json")
    missing = getattr(client, method)(path.format(**MISSING), {}, format="json")
    assert (existing.status_code, missing.status_code) == (403, 403), (existing.json(), missing.json())


def test_nodes_of_a_missing_cluster_is_404_only_for_users_who_may_view_nodes(make_user, objects):
    viewer = api_client(make_user("viewer", "hardware.view_node"))
    assert viewer.get(f"/clusters/{objects['cluster']}/nodes").status_code == 200
    assert viewer.get("/clusters/999/nodes").status_code == 404
    assert (
        api_client(make_user("other", "clusters.view_cluster")).get("/clusters/999/nodes").status_code == 403
    )


def test_cancel_without_view_answers_the_run_id_and_status_only(make_user, objects):
    canceller = api_client(make_user("canceller", "core.cancel_run"))
    run = objects["run"]
    response = canceller.post(f"/runs/{run}/cancel", {"reason": "stop"}, format="json")
    assert response.status_code == 202
    assert set(response.json()) == {"run_id", "run_url", "status"}
    assert response.json()["run_id"] == str(run)
    assert canceller.get(f"/runs/{run}").status_code == 403


def test_cancel_with_view_answers_the_run(make_user, objects):
    both = api_client(make_user("both", "core.cancel_run", "core.view_run"))
    response = both.post(f"/runs/{objects['run']}/cancel", {"reason": "stop"}, format="json")
    assert response.status_code == 202
    assert {"steps", "events", "params"} <= set(response.json())


def test_a_change_only_patch_answers_without_the_cluster(make_user, objects):
    changer = api_client(make_user("changer", "clusters.change_cluster"))
    pk = objects["cluster"]
    response = changer.patch(f"/clusters/{pk}", {"labels": {"team": "a"}}, format="json")
    assert response.status_code == 200
    assert response.json() == {"id": pk, "updated": ["labels"]}
    assert Cluster.objects.get(pk=pk).labels == {"team": "a"}
    assert changer.get(f"/clusters/{pk}").status_code == 403

    editor = api_client(make_user("editor", "clusters.change_cluster", "clusters.view_cluster"))
    full = editor.patch(f"/clusters/{pk}", {"labels": {"team": "b"}}, format="json")
    assert (
        full.status_code == 200 and full.json()["name"] == "prod-1" and full.json()["labels"] == {"team": "b"}
    )


def test_an_add_only_credential_answers_its_id_and_name(make_user):
    adder = api_client(make_user("adder", "provisioning.add_cloudcredential"))
    body = {"name": "aws-2", "provider": "aws", "access_key_id": "AKIA", "secret_access_key": "secret"}
    response = adder.post("/credentials", body, format="json")
    assert response.status_code == 201
    created = CloudCredential.objects.get(name="aws-2")
    assert response.json() == {"id": created.pk, "name": "aws-2"}
    assert adder.get(f"/credentials/{created.pk}").status_code == 403


def test_anonymous_requests_are_401_before_any_lookup(objects):
    client = APIClient()
    for method, path in OPERATIONS:
        assert getattr(client, method)(path.format(**MISSING)).status_code == 401, path
