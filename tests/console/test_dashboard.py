"""The fleet dashboard on the admin index, and the cluster list's accelerator and deployment columns.

The page is read as an operator reads it: the figures in its sections are compared with what was put in the
database (clusters, nodes with GPUs of two models, deployments in several statuses, a run in progress, a failed
run); a user sees only the sections of what they may view; the page costs the same number of queries for a fleet
ten times larger; and its one script is a same-origin file the Content-Security-Policy allows, which refreshes
the runs section from a fragment URL that answers with the current progress.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.html import parse_html
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clusters.models import Cluster
from core.models import Run, RunStep
from deployments.models import Deployment
from hardware.models import Node
from tests.console.html import attr as _attr
from tests.console.html import find as _find
from tests.console.html import one as _one
from tests.console.html import text as _text

pytestmark = pytest.mark.django_db

EVERYTHING = (
    "clusters.view_cluster",
    "hardware.view_node",
    "deployments.view_deployment",
    "core.view_run",
)


# --- reading the page ------------------------------------------------------------------------------------------


def _page(client, url: str = "/admin/"):
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response, parse_html(response.content.decode())


# --- the fleet -------------------------------------------------------------------------------------------------


def _node(cluster, name, *, ready=True, kind="cuda", model=None, count=0, free=0):
    return Node.objects.create(
        cluster=cluster, name=name, ready=ready, accelerator_type=kind, accelerator_model=model,
        accelerator_count=count, free_accelerators=free,
    )  # fmt: skip


def _deployment(cluster, name, status, reason=""):
    return Deployment.objects.create(
        cluster=cluster, name=name, namespace=f"bud-{name}-0a1b2c3d", model_name="meta-llama/Llama-3-8B",
        status=status, reason=reason,
    )  # fmt: skip


def _seed(suffix: str = "") -> dict:
    """Two clusters: prod-a (available; two H100 nodes, one not ready, and a CPU node), prod-b (error; one A100
    node); deployments running, failed, degraded and deleted; a run at 42 % and a run that failed."""
    a = Cluster.objects.create(
        name=f"prod-a{suffix}", status="available", server_url=f"https://a{suffix}.example"
    )
    b = Cluster.objects.create(
        name=f"prod-b{suffix}", status="error", reason="unreachable for 24 h: connection refused",
        server_url=f"https://b{suffix}.example",
    )  # fmt: skip
    _node(a, "gpu-1", model="NVIDIA-H100-80GB-HBM3", count=8, free=3)
    _node(a, "gpu-2", ready=False, model="NVIDIA-H100-80GB-HBM3", count=8, free=5)
    _node(a, "cpu-1", kind="cpu")
    _node(b, "gpu-1", model="NVIDIA-A100-SXM4-40GB", count=4, free=4)
    _deployment(a, "llama", "running")
    _deployment(a, "mistral", "running")
    _deployment(a, "qwen", "failed", "image pull failed: manifest unknown")
    _deployment(b, "phi", "degraded", "1 of 2 replicas ready")
    _deployment(b, "old", "deleted")
    running = Run.objects.create(
        kind="deployment.deploy", title=f"Deploy llama{suffix}", status="running", progress=42.4,
        started_at=timezone.now(),
    )  # fmt: skip
    RunStep.objects.create(run=running, order=0, name="transfer", title="Transfer model", status="succeeded")
    RunStep.objects.create(run=running, order=1, name="install", title="Install runtime", status="running")
    failed = Run.objects.create(
        kind="cluster.register", title=f"Register prod-b{suffix}", status="failed",
        error="verify: the API server refused the credentials (401)", finished_at=timezone.now(),
    )  # fmt: skip
    RunStep.objects.create(run=failed, order=0, name="verify", title="Verify access", status="failed")
    return {"a": a, "b": b, "running": running, "failed": failed}


# --- the figures -----------------------------------------------------------------------------------------------


def test_the_dashboard_shows_the_fleet_as_the_database_has_it(admin_client):
    fleet = _seed()
    _response, page = _page(admin_client)

    clusters = _one(page, id="fleet-clusters")
    assert "Available 1" in _text(clusters) and "Error 1" in _text(clusters)
    rows = {_attr(r, "data-cluster"): r for r in _find(clusters, cls="fleet-cluster")}
    assert set(rows) == {"prod-a", "prod-b"}
    assert _text(_one(rows["prod-a"], cls="nodes")) == "2 / 3"  # ready / all, the CPU node included
    assert _text(_one(rows["prod-b"], cls="nodes")) == "1 / 1"
    h100 = _one(rows["prod-a"], cls="gpu")
    assert _attr(h100, "data-model") == "NVIDIA-H100-80GB-HBM3"
    assert (_text(_one(h100, cls="total")), _text(_one(h100, cls="free"))) == ("16", "8")
    a100 = _one(rows["prod-b"], cls="gpu")
    assert (_text(_one(a100, cls="total")), _text(_one(a100, cls="free"))) == ("4", "4")
    assert "connection refused" in _text(rows["prod-b"])  # the cause of the error status

    # The fleet-wide chart: one bar per model, its free part in proportion (8 of 16 H100s, the widest).
    models = {_text(r.children[0]): r for r in _find(clusters, cls="fleet-model")}
    assert set(models) == {"NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB"}
    used, free = _find(models["NVIDIA-H100-80GB-HBM3"], tag="rect")
    assert (_attr(used, "width"), _attr(free, "width")) == ("100", "100")
    used, free = _find(models["NVIDIA-A100-SXM4-40GB"], tag="rect")
    assert (_attr(used, "width"), _attr(free, "width")) == ("0", "50")

    deployments = _one(page, id="fleet-deployments")
    counts = {
        _attr(s, "data-status"): _text(_one(s, cls="count"))
        for s in _find(deployments, cls="deployment-status")
    }
    assert counts == {"running": "2", "degraded": "1", "failed": "1"}  # the deleted one is gone
    attention = {
        _attr(r, "data-deployment"): _text(_one(r, cls="reason"))
        for r in _find(deployments, cls="fleet-deployment")
    }
    assert attention == {"qwen": "image pull failed: manifest unknown", "phi": "1 of 2 replicas ready"}

    run = _one(_one(page, id="fleet-runs"), cls="fleet-run")
    assert _attr(run, "data-run") == str(fleet["running"].pk)
    assert _attr(_one(run, tag="progress"), "value") == "42"
    assert "Install runtime" in _text(run) and "Deploy llama" in _text(run)

    failure = _one(_one(page, id="fleet-failures"), cls="fleet-failure")
    assert "Register prod-b" in _text(failure) and "Verify access" in _text(failure)
    assert _text(_one(failure, cls="cause")) == "verify: the API server refused the credentials (401)"


def test_housekeeping_apps_come_after_the_fleet_apps(admin_client):
    html = admin_client.get("/admin/").content.decode()
    dashboard, clusters_app, housekeeping = (
        html.index('id="fleet-clusters"'), html.index('class="app-clusters'), html.index('id="housekeeping"')
    )  # fmt: skip
    assert dashboard < clusters_app < housekeeping
    for app in ("app-auth", "app-django_celery_beat", "app-knox", "app-axes"):
        assert html.index(f'class="{app}') > housekeeping, app


def test_the_runs_fragment_shows_the_current_progress(admin_client):
    """What the page's script fetches: the same section, with the progress as it is now."""
    fleet = _seed()
    _response, page = _page(admin_client)
    url = _attr(_one(page, id="fleet-runs"), "data-refresh-url")
    Run.objects.filter(pk=fleet["running"].pk).update(progress=87.0)
    RunStep.objects.filter(run=fleet["running"], name="install").update(status="succeeded")
    RunStep.objects.create(
        run=fleet["running"], order=2, name="probe", title="Wait for the endpoint", status="waiting"
    )

    _response, fragment = _page(admin_client, url)
    run = _one(fragment, cls="fleet-run")
    assert _attr(_one(run, tag="progress"), "value") == "87"
    assert "Wait for the endpoint" in _text(run)


# --- permissions -----------------------------------------------------------------------------------------------


def test_a_section_shows_only_what_the_user_may_view(client, make_user):
    _seed()
    client.force_login(make_user("viewer", "clusters.view_cluster"))
    _response, page = _page(client)
    clusters = _one(page, id="fleet-clusters")
    assert {_attr(r, "data-cluster") for r in _find(clusters, cls="fleet-cluster")} == {"prod-a", "prod-b"}
    assert not _find(clusters, cls="gpu") and not _find(clusters, cls="nodes")  # no hardware.view_node
    assert not _find(page, id="fleet-deployments") and not _find(page, id="fleet-runs")
    assert not _find(page, id="fleet-failures")

    client.force_login(make_user("deployer", "deployments.view_deployment"))
    html = client.get("/admin/").content.decode()
    assert 'id="fleet-deployments"' in html and "image pull failed" in html
    assert (
        'id="fleet-clusters"' not in html and "connection refused" not in html and "Deploy llama" not in html
    )


def test_a_user_with_housekeeping_rights_only_sees_no_fleet_and_no_refusal(client, make_user):
    _seed()
    client.force_login(make_user("accounts", "auth.view_user"))
    html = client.get("/admin/").content.decode()
    assert 'id="housekeeping"' in html and 'class="app-auth' in html
    assert "permission to view or edit anything" not in html
    assert "prod-a" not in html and "fleet-" not in html.replace("fleet-index", "")


def test_the_runs_fragment_needs_the_run_view_permission(client, make_user):
    _seed()
    client.force_login(make_user("viewer", "clusters.view_cluster"))
    assert client.get("/admin/fleet/runs/").status_code == 403
    client.logout()
    assert client.get("/admin/fleet/runs/").status_code == 302  # to the login page
    client.force_login(make_user("operator", "core.view_run"))
    assert "Deploy llama" in client.get("/admin/fleet/runs/").content.decode()


# --- cost ------------------------------------------------------------------------------------------------------


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


@pytest.mark.parametrize("url", ["/admin/", "/admin/fleet/runs/", "/admin/clusters/cluster/"])
def test_the_query_count_does_not_grow_with_the_fleet(client, make_user, django_assert_max_num_queries, url):
    client.force_login(make_user("operator", *EVERYTHING))
    _seed()
    small = _queries(client, url)
    for n in range(10):
        _seed(f"-{n}")
    with django_assert_max_num_queries(small):
        assert client.get(url).status_code == 200


# --- the cluster list ------------------------------------------------------------------------------------------


def test_the_cluster_list_shows_gpus_and_deployments(client, make_user):
    _seed()
    client.force_login(make_user("operator", "clusters.view_cluster", "deployments.view_deployment"))
    _response, page = _page(client, "/admin/clusters/cluster/")
    rows = {_text(_one(r, cls="field-name")): r for r in _find(_one(page, id="result_list"), tag="tr")[1:]}
    assert _text(_one(rows["prod-a"], cls="field-accelerators")) == "16 / 8"
    assert _text(_one(rows["prod-a"], cls="field-deployment_count")) == "3 (2)"  # 3 live, 2 running
    assert _text(_one(rows["prod-b"], cls="field-accelerators")) == "4 / 4"
    assert _text(_one(rows["prod-b"], cls="field-deployment_count")) == "1 (0)"  # the deleted one not counted

    client.force_login(make_user("viewer", "clusters.view_cluster"))
    assert "field-deployment_count" not in client.get("/admin/clusters/cluster/").content.decode()


# --- Content-Security-Policy -----------------------------------------------------------------------------------


def test_the_csp_allows_the_pages_script_and_nothing_inline(admin_client):
    _seed()
    response, page = _page(admin_client)
    policy = response.headers["Content-Security-Policy"]
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src")).split()[1:]
    assert script_src == ["'self'"]
    scripts = _find(page, tag="script")
    sources = [_attr(s, "src") for s in scripts]
    assert all(sources), "an inline script, which the policy blocks"
    assert not any(_text(s) for s in scripts)
    refresh = [s for s in sources if s.endswith("core/js/refresh.js")]
    assert refresh and not urlparse(refresh[0]).netloc  # same origin: what 'self' allows
    assert finders.find("core/js/refresh.js")
    served = admin_client.get(refresh[0])
    assert served.status_code == 200 and b"data-refresh-url" in b"".join(served.streaming_content)
