"""What the console's pages show (issue "The operators' console and the API contract", items 2 and 4).

A deployment's revision table and a benchmark's target verdict show their figures (they used to show "-": the
admin swallowed the error of a format spec on escaped text); the benchmarks list shows a run that missed its
targets as a failure; the cluster form refuses what the API refuses, with the API's words; the namespace help
text keeps its ``<sanitised name>``; "View site" leads to a page that exists."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from clusters.models import Cluster, Release, Revision
from deployments.models import Benchmark, Deployment

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    return Cluster.objects.create(name="prod-1", status="available", server_url="https://k8s.example")


@pytest.fixture
def deployment(cluster):
    release = Release.objects.create(
        cluster=cluster,
        name="llama",
        namespace="bud-llama-0a1b2c3d",
        chart="bud_runtime_container",
        current_revision=2,
    )
    for number, day in ((1, 2), (2, 3)):
        Revision.objects.create(
            release=release, number=number, manifest="", description=f"scale to {number}",
            applied=[{"apiVersion": "apps/v1", "kind": "Deployment", "name": f"llama-r{number}"}],
            created_at=datetime(2025, 1, day, 4, 5, 6, tzinfo=UTC),
        )  # fmt: skip
    return Deployment.objects.create(
        name="llama", cluster=cluster, namespace=release.namespace, model_name="llama", status="running",
        release=release,
    )  # fmt: skip


def test_the_revision_table_lists_every_revision(admin_client, deployment):
    page = admin_client.get(f"/admin/deployments/deployment/{deployment.pk}/change/").content.decode()
    table = re.search(r"<table><tr><th>#</th><th>description</th>.*?</table>", page, re.S)
    assert table, "no revision table"
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", table.group(0))
    assert rows == [
        ("2 (current)", "scale to 2", "2025-01-03 04:05:06", "Deployment/llama-r2"),
        ("1", "scale to 1", "2025-01-02 04:05:06", "Deployment/llama-r1"),
    ]


def test_the_namespace_help_text_keeps_its_angle_brackets(admin_client, deployment):
    page = admin_client.get(f"/admin/deployments/deployment/{deployment.pk}/change/").content.decode()
    assert "bud-&lt;sanitised name&gt;-&lt;8 hex&gt;, one per deployment" in page
    assert "<sanitised name>" not in page


def _benchmark(deployment, *, passed: bool) -> Benchmark:
    checks = {
        "ttft_ms": {"target": 200.0, "limit": 300.0, "measured": 412.5, "passed": False},
        "e2e_ms": {"target": 2000.0, "limit": 3000.0, "measured": 1500.0, "passed": True},
    }
    if passed:
        checks["ttft_ms"].update(measured=150.0, passed=True)
    return Benchmark.objects.create(
        deployment=deployment, status="succeeded", passed=passed, margin=0.5,
        summary={"targets": checks, "passed": passed, "target_margin": 0.5, "successful_requests": 10},
    )  # fmt: skip


def test_the_target_verdict_shows_each_target(admin_client, deployment):
    missed = _benchmark(deployment, passed=False)
    page = admin_client.get(f"/admin/deployments/benchmark/{missed.pk}/change/").content.decode()
    assert "FAILED (margin 50%)" in page
    assert "<tr><td>ttft_ms</td><td>200.00</td><td>300.00</td><td>412.50</td><td>False</td></tr>" in page


def test_the_benchmarks_list_shows_missed_targets_as_a_failure(admin_client, deployment):
    missed, met = _benchmark(deployment, passed=False), _benchmark(deployment, passed=True)
    listing = admin_client.get("/admin/deployments/benchmark/").content.decode()
    badges = dict(
        re.findall(r'<a href="/admin/deployments/benchmark/(\d+)/change/.*?>([^<>]+)</span>', listing, re.S)
    )
    assert badges == {str(missed.pk): "Targets missed", str(met.pk): "Targets met"}
    missed_row = re.search(rf"benchmark/{missed.pk}/change/.*?</tr>", listing, re.S).group(0)
    assert "#dc3545" in missed_row  # the failure colour, not the success one
    assert "#198754" not in missed_row


def _change_form(client, url: str) -> dict:
    """The change form's current values, hidden inputs (inline management forms) included."""
    page = client.get(url).content.decode()
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    data.pop("csrfmiddlewaretoken", None)
    return data


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("labels", '{"gpu": 1}', "labels must be an object of string keys and string values"),
        ("labels", '{"team": "' + "x" * 300 + '"}', "values are at most 256"),
        ("ingress_url", "http://169.254.169.254/latest", "169.254.169.254"),
        ("name", "prod 1!", "name may hold letters, digits"),
    ],
)
def test_the_cluster_form_refuses_what_the_api_refuses(
    admin_client, admin_user, cluster, field, value, words
):
    url = f"/admin/clusters/cluster/{cluster.pk}/change/"
    data = {
        **_change_form(admin_client, url),
        "name": cluster.name,
        "ingress_url": "",
        "labels": "{}",
        field: value,
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    assert words in response.content.decode()
    cluster.refresh_from_db()
    assert cluster.labels == {} and cluster.ingress_url == "" and cluster.name == "prod-1"

    # The API answers the same request with the same words.
    api = APIClient()
    api.force_authenticate(admin_user)
    payload = {field: json.loads(value) if field == "labels" else value}
    answer = api.patch(f"/clusters/{cluster.pk}", payload, format="json")
    assert answer.status_code == 400 and words in answer.content.decode()


def test_the_cluster_form_saves_valid_labels_through_the_service(admin_client, cluster):
    url = f"/admin/clusters/cluster/{cluster.pk}/change/"
    data = {**_change_form(admin_client, url), "name": "prod-2", "ingress_url": "https://ingress.example.com"}
    response = admin_client.post(url, {**data, "labels": '{"team": "ml", "tier": "gold"}'})
    assert response.status_code == 302
    cluster.refresh_from_db()
    assert (cluster.name, cluster.ingress_url, cluster.labels) == (
        "prod-2",
        "https://ingress.example.com",
        {"team": "ml", "tier": "gold"},
    )


def test_view_site_leads_to_the_api_docs(admin_client):
    index = admin_client.get("/admin/").content.decode()
    link = re.search(r'<a href="([^"]+)">View site</a>', index)
    assert link and link.group(1) == "/docs"
    docs = admin_client.get(link.group(1))
    assert docs.status_code == 200 and docs["Content-Type"].startswith("text/html")
