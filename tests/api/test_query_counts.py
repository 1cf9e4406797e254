"""A list costs the same number of queries whatever its page size and however large the fleet, and so does a
detail: an N+1 (a query per row, per node or per run) would make the API slower as the fleet grows, which
``benchmarks/api_load.py`` measures at 2,000 clusters. The client is a user who may only view, through a group,
as an operator's dashboard would be: its permission checks are counted too."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from core.tokens import create_token
from tests.contract.conftest import gpu_node, running_deployment

pytestmark = pytest.mark.django_db

# Token, user and permissions (1), the count and the page (2), the clusters' node summaries (1).
MOST_PER_LIST = 4
VIEW = (
    ("clusters", "view_cluster"),
    ("hardware", "view_node"),
    ("core", "view_run"),
    ("deployments", "view_deployment"),
)


@pytest.fixture
def viewer(django_user_model) -> tuple[APIClient, object]:
    group = Group.objects.create(name="viewers")
    for app_label, codename in VIEW:
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    user = django_user_model.objects.create_user("dashboard", "d@example.com", "a-long-test-password")
    user.groups.add(group)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user)[1]}")
    return client, user


def _grow(start: int, count: int) -> Cluster:
    """``count`` clusters, each with 3 nodes (2 with GPUs), a deployment (with its release and an autoscaling
    policy) and 2 runs started by a user; returns the first. Every column a list shows is set, so a list that
    reads fewer columns than it shows pays a query per row here."""
    from django.contrib.auth import get_user_model

    starter, _ = get_user_model().objects.get_or_create(username="starter")
    first = None
    for i in range(start, start + count):
        cluster = Cluster.objects.create(
            name=f"c{i}", server_url=f"https://10.0.0.{i}:6443", status="available", labels={"i": str(i)}
        )
        for n in range(3):
            gpu_node(cluster, f"n{n}", ready=n != 2, free=n)
        cluster.nodes.filter(name="n2").update(accelerator_count=0, accelerator_type="cpu")
        deployment = running_deployment(cluster, f"d{i}")
        deployment.autoscaling = {
            "min_replicas": 1,
            "max_replicas": 3,
            "metric": "waiting_requests",
            "target": 4,
        }
        deployment.save(update_fields=["autoscaling"])
        for subject, kind in ((cluster, "cluster.register"), (deployment, "deployment.deploy")):
            Run.objects.create(
                id=uuid.uuid4(), kind=kind, subject=subject, status=RunStatus.SUCCEEDED, created_by=starter
            )
        first = first or cluster
    return first


def _queries(client: APIClient, path: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path)
    assert response.status_code == 200, (path, response.content)
    return len(ctx.captured_queries)


def _lists(cluster: Cluster) -> list[str]:
    return ["/clusters", f"/clusters/{cluster.pk}/nodes", "/runs", "/deployments"]


def _details(cluster: Cluster) -> list[str]:
    run = Run.objects.order_by("created_at").first()
    deployment = cluster.deployments.get()
    return [f"/clusters/{cluster.pk}", f"/runs/{run.pk}", f"/deployments/{deployment.pk}"]


def test_list_and_detail_queries_do_not_grow_with_page_size_or_fleet(viewer):
    client, _user = viewer
    cluster = _grow(0, 2)
    small = {path: [_queries(client, f"{path}?limit={n}") for n in (1, 2, 50)] for path in _lists(cluster)}
    for path, counts in small.items():
        assert len(set(counts)) == 1, f"{path}: {counts} queries at page sizes 1, 2, 50"
        assert counts[0] <= MOST_PER_LIST, f"{path}: {counts[0]} queries"
    detail_small = {path: _queries(client, path) for path in _details(cluster)}

    _grow(2, 25)  # 27 clusters, 81 nodes, 27 deployments, 54 runs
    for path, counts in small.items():
        assert _queries(client, f"{path}?limit=50") == counts[0], path
        assert _queries(client, f"{path}?limit=1000") == counts[0], path
    for path, count in detail_small.items():
        assert _queries(client, path) == count, path


def test_the_page_still_shows_each_clusters_nodes_and_gpus(viewer):
    client, _user = viewer
    _grow(0, 3)
    rows = client.get("/clusters?limit=50").json()["results"]
    assert [r["name"] for r in rows] == ["c0", "c1", "c2"]
    for row in rows:
        assert row["url"].endswith(f"/clusters/{row['id']}")
        summary = row["summary"]
        assert (summary["nodes"], summary["ready_nodes"], summary["total_gpus"]) == (3, 2, 16)
        assert summary["free_gpus"] == 1 and summary["gpus"]["NVIDIA-H100-80GB-HBM3"]["total"] == 16


def test_a_permission_given_or_taken_away_applies_to_the_next_request(viewer):
    client, user = viewer
    _grow(0, 1)
    assert client.get("/clusters").status_code == 200
    user.groups.clear()
    assert client.get("/clusters").status_code == 403
    # Given to the user directly (not through a group): that permission only.
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="clusters", codename="view_cluster")
    )
    assert client.get("/clusters").status_code == 200
    assert client.get("/runs").status_code == 403


def test_the_lists_show_what_their_rows_hold(viewer):
    """The lists read only the columns they show: what they show is still all there (creator, subject, revision,
    cluster name, autoscaling policy)."""
    client, _user = viewer
    _grow(0, 2)
    runs = client.get("/runs?limit=50").json()["results"]
    assert {r["created_by"] for r in runs} == {"starter"}
    assert {r["subject_type"] for r in runs} == {"clusters.cluster", "deployments.deployment"}
    deployments = client.get("/deployments?limit=50").json()["results"]
    assert sorted(d["cluster_name"] for d in deployments) == ["c0", "c1"]
    assert {d["revision"] for d in deployments} == {1}
    assert {d["autoscaling"]["policy"]["max_replicas"] for d in deployments} == {3}
