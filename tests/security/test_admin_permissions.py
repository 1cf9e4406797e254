"""Admin actions and views need the permission of their API twin (issue 14, item 5).

As a view-only staff user, none of "Re-run registration", "Collect node information", "Check health now"
(clusters and deployments), the deletions (list actions and Delete buttons) or the plan preview starts anything or
answers 200; with the API twin's permission, each does."""

from __future__ import annotations

import pytest
from django.test import Client

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.models import Run
from deployments import health as deployment_health
from deployments import services as deployment_services
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from hardware import services as hardware_services

pytestmark = pytest.mark.django_db

CLUSTERS = "/admin/clusters/cluster/"
DEPLOYMENTS = "/admin/deployments/deployment/"
PLAN = "/admin/deployments/deployment/plan/"


@pytest.fixture
def rows():
    cluster = Cluster.objects.create(name="prod-1", status=ClusterStatus.AVAILABLE, server_url="https://k8s")
    deployment = Deployment.objects.create(
        name="llama", cluster=cluster, namespace="bud-llama-1", model_name="llama-3.1-8b-instruct",
        status=DeploymentStatus.RUNNING,
    )  # fmt: skip
    return cluster, deployment


@pytest.fixture
def calls(monkeypatch):
    """Every service an action could start, replaced by a recorder (nothing reaches a cluster or the broker)."""
    seen: list[str] = []

    def record(name):
        def fake(*args, **kwargs):
            seen.append(name)
            if name == "cluster sweep":
                return cluster_services.SweepReport(checked=1)
            if name == "deployment sweep":
                return {"checked": 1, "transitions": []}
            return Run.objects.create(kind=name, title=name)

        return fake

    monkeypatch.setattr(cluster_services, "sweep", record("cluster sweep"))
    monkeypatch.setattr(cluster_services, "rerun_registration", record("cluster.register"))
    monkeypatch.setattr(hardware_services, "start_collection", record("hardware.collect"))
    monkeypatch.setattr(deployment_health, "sweep", record("deployment sweep"))
    monkeypatch.setattr(cluster_services, "request_delete", record("cluster.delete"))
    monkeypatch.setattr(deployment_services, "start_delete", record("deployment.delete"))
    return seen


def _act(client: Client, changelist: str, action: str, pk: int):
    return client.post(changelist, {"action": action, "_selected_action": [pk], "index": 0})


@pytest.mark.parametrize(
    ("changelist", "action"),
    [
        (CLUSTERS, "rerun_registration"),
        (CLUSTERS, "collect_node_info"),
        (CLUSTERS, "check_health_now"),
        (CLUSTERS, "delete_clusters"),
        (DEPLOYMENTS, "check_health_now"),
        (DEPLOYMENTS, "scale"),
        (DEPLOYMENTS, "roll_back"),
        (DEPLOYMENTS, "delete_deployments"),
    ],
)
def test_a_view_only_staff_user_starts_nothing(view_only_staff, rows, calls, changelist, action):
    cluster, deployment = rows
    client = Client()
    client.force_login(view_only_staff)
    page = client.get(changelist)
    assert page.status_code == 200
    assert f'value="{action}"' not in page.content.decode()  # not offered
    pk = cluster.pk if changelist == CLUSTERS else deployment.pk
    response = client.post(
        changelist, {"action": action, "_selected_action": [pk], "index": 0, "replicas": 2, "revision": 1}
    )
    assert response.status_code == 403
    assert calls == []
    assert not Run.objects.exists()


def test_the_plan_preview_needs_the_plan_permission(make_user, rows):
    client = Client()
    client.force_login(make_user("nobody", staff=True))
    assert client.get(PLAN).status_code == 403
    assert client.post(PLAN, {"cluster": rows[0].pk, "model": "llama-3.1-8b-instruct"}).status_code == 403
    client.force_login(make_user("planner", "deployments.view_deployment", staff=True))
    assert client.get(PLAN).status_code == 200


@pytest.mark.parametrize(
    ("changelist", "action", "perms", "started"),
    [
        (CLUSTERS, "rerun_registration", ["clusters.change_cluster"], "cluster.register"),
        (CLUSTERS, "collect_node_info", ["hardware.add_node"], "hardware.collect"),
        (CLUSTERS, "check_health_now", ["clusters.check_cluster"], "cluster sweep"),
        (DEPLOYMENTS, "check_health_now", ["deployments.change_deployment"], "deployment sweep"),
    ],
)
def test_the_api_twins_permission_allows_the_action(
    make_user, rows, calls, changelist, action, perms, started
):
    cluster, deployment = rows
    user = make_user("operator", "clusters.view_cluster", "deployments.view_deployment", *perms, staff=True)
    client = Client()
    client.force_login(user)
    assert f'value="{action}"' in client.get(changelist).content.decode()
    response = _act(client, changelist, action, cluster.pk if changelist == CLUSTERS else deployment.pk)
    assert response.status_code == 302
    assert calls == [started]


@pytest.mark.parametrize("changelist", [CLUSTERS, DEPLOYMENTS])
def test_the_delete_button_needs_the_delete_permission(make_user, view_only_staff, rows, calls, changelist):
    cluster, deployment = rows
    url = f"{changelist}{(cluster if changelist == CLUSTERS else deployment).pk}/delete/"
    client = Client()
    client.force_login(view_only_staff)
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes", "force": "on"}).status_code == 403
    assert calls == [] and not Run.objects.exists()
    assert (
        Cluster.objects.filter(pk=cluster.pk).exists()
        and Deployment.objects.filter(pk=deployment.pk).exists()
    )

    model = "cluster" if changelist == CLUSTERS else "deployment"
    app = "clusters" if changelist == CLUSTERS else "deployments"
    client.force_login(make_user("deleter", f"{app}.view_{model}", f"{app}.delete_{model}", staff=True))
    assert client.get(url).status_code == 200  # the confirmation page
    assert client.post(url, {"post": "yes", "force": "on"}).status_code == 302
    assert calls == [f"{model}.delete"]
