"""What the admin may delete, and how (issue "The operators' console and the API contract", item 1).

The deployments list action asks first, then starts one deletion run per deployment (the API's service, its
refusals per deployment) and opens the runs. Runs are the audit trail: nobody deletes one in the admin. Rows
whose deletion would leave things behind in a cluster or a cloud account (releases, provisionings) and the node
inventory (a mirror of the cluster) have no Delete at all; a benchmark still measuring neither."""

from __future__ import annotations

import pytest

from clusters.models import Cluster, Release
from core.models import Run
from deployments import services as deployment_services
from deployments.models import Benchmark, Deployment
from hardware.models import Node
from provisioning.models import CloudCredential, Provisioning

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/admin/deployments/deployment/"


@pytest.fixture
def cluster():
    return Cluster.objects.create(name="prod-1", status="available", server_url="https://k8s.example")


def _deployment(cluster, name: str, status: str = "running") -> Deployment:
    return Deployment.objects.create(
        name=name, cluster=cluster, namespace=f"bud-{name}-0a1b2c3d", model_name="llama", status=status
    )


@pytest.fixture
def started(monkeypatch):
    """``services.start_delete`` recorded (no broker, no worker): the deployment names it was called for."""
    names: list[str] = []
    real = deployment_services.start_delete

    def record(deployment, *, user=None):
        if deployment.status == "deleted":
            return real(deployment, user=user)  # the real refusal
        names.append(deployment.name)
        return Run.objects.create(kind="deployment.delete", title="Delete", subject_id=str(deployment.pk))

    monkeypatch.setattr(deployment_services, "start_delete", record)
    return names


def test_the_list_action_asks_first_then_starts_one_run_each_and_opens_them(admin_client, cluster, started):
    a, b = _deployment(cluster, "alpha"), _deployment(cluster, "beta")
    gone = _deployment(cluster, "gamma", status="deleted")
    selection = {"action": "delete_deployments", "_selected_action": [a.pk, b.pk, gone.pk]}

    page = admin_client.post(DEPLOYMENTS, {**selection, "index": 0})
    assert page.status_code == 200
    text = page.content.decode()
    for d in (a, b, gone):
        assert f"namespace {d.namespace}" in text
    assert started == [] and not Run.objects.exists()  # asking starts nothing

    confirmed = admin_client.post(DEPLOYMENTS, {**selection, "post": "yes"})
    assert sorted(started) == ["alpha", "beta"]
    runs = Run.objects.filter(kind="deployment.delete")
    assert confirmed.status_code == 302
    location = confirmed["Location"]
    assert location.startswith("/admin/core/run/?id__in=")
    assert set(location.split("=", 1)[1].split(",")) == {str(r.pk) for r in runs}
    listing = admin_client.get(location).content.decode()
    assert all(str(r.pk) in listing for r in runs)
    assert "deployment gamma is already deleted" in listing  # the refused one is said; the others went on


def test_without_the_run_view_permission_confirming_lands_on_the_list(make_user, cluster, started, client):
    deployment = _deployment(cluster, "alpha")
    client.force_login(make_user("deleter", "deployments.view_deployment", "deployments.delete_deployment"))
    response = client.post(f"{DEPLOYMENTS}{deployment.pk}/delete/", {"post": "yes"})
    assert started == ["alpha"]
    assert response.status_code == 302 and response["Location"] == DEPLOYMENTS
    run = Run.objects.get()
    assert str(run.pk) in client.get(DEPLOYMENTS).content.decode()  # the message names the run


def test_runs_are_never_deleted_in_the_admin(admin_client):
    run = Run.objects.create(kind="cluster.register", title="Register")
    assert admin_client.get(f"/admin/core/run/{run.pk}/delete/").status_code == 403
    listing = admin_client.get("/admin/core/run/").content.decode()
    assert 'value="delete_selected"' not in listing
    response = admin_client.post(
        "/admin/core/run/",
        {"action": "delete_selected", "_selected_action": [run.pk], "index": 0, "post": "yes"},
    )
    assert response.status_code == 403
    assert Run.objects.filter(pk=run.pk).exists()


def _rows(cluster):
    release = Release.objects.create(
        cluster=cluster, name="runtime", namespace="bud-x-0a1b2c3d", chart="runtime"
    )
    node = Node.objects.create(cluster=cluster, name="gpu-0")
    credential = CloudCredential.objects.create(name="aws", provider="aws", secret={"access_key_id": "A"})
    provisioning = Provisioning.objects.create(
        cluster=cluster, provider="aws", region="eu-west-1", kubernetes_version="1.31", credential=credential,
        module="terraform/modules/aws-eks", backend="pg", state_name="tf_x",
    )  # fmt: skip
    return {
        "/admin/clusters/release/": release,
        "/admin/hardware/node/": node,
        "/admin/provisioning/provisioning/": provisioning,
    }


def test_rows_that_would_leave_things_behind_have_no_delete(admin_client, cluster):
    for changelist, row in _rows(cluster).items():
        assert admin_client.get(f"{changelist}{row.pk}/delete/").status_code == 403, changelist
        assert 'value="delete_selected"' not in admin_client.get(changelist).content.decode(), changelist
        change = admin_client.get(f"{changelist}{row.pk}/change/").content.decode()
        assert f"{row.pk}/delete/" not in change, changelist  # no Delete button
        assert type(row).objects.filter(pk=row.pk).exists()


def test_a_benchmark_still_measuring_cannot_be_deleted(admin_client, cluster):
    deployment = _deployment(cluster, "alpha")
    running = Benchmark.objects.create(deployment=deployment, status="running")
    done = Benchmark.objects.create(deployment=deployment, status="succeeded")
    assert admin_client.get(f"/admin/deployments/benchmark/{running.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/deployments/benchmark/{done.pk}/delete/").status_code == 200
