"""The fleet dashboard: the admin index shows the state of the fleet before the list of models.

Sections (each shown only to a user holding its view permission; the others are left out, not emptied):

* clusters by status, and per cluster its nodes (ready of all) and accelerators by model, total and free, with
  a bar chart (inline SVG: the Content-Security-Policy allows no external assets) — ``clusters.view_cluster``,
  the node figures also ``hardware.view_node``;
* deployments by status, and the ones that need attention (not running) with their reason —
  ``deployments.view_deployment``;
* runs in progress with their progress bars, and the recent failures with their cause — ``core.view_run``.
  The runs section is a fragment served on its own (``runs_fragment``), which ``core/js/refresh.js`` (a
  same-origin script, as ``script-src 'self'`` requires) fetches again every few seconds; the rest of the page
  stays still.

It is composed here, in the project wiring, because it spans every app and ``clusters`` may not know the apps
built on it. Every figure comes from an aggregate query, so the page costs the same few queries for a fleet of
three clusters or three thousand; the lists are capped (the full lists are one click away in each admin).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Subquery
from django.template.response import TemplateResponse

from clusters.admin import CLUSTER_COLOURS
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.admin import status_badge
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from deployments.admin import STATUS_COLOURS as DEPLOYMENT_COLOURS
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from hardware.admin import accelerators_by_model
from hardware.admin import capacity_bars as _bars
from hardware.models import Node

# Apps whose models are the fleet itself; the others (users and groups, tokens, login attempts, Celery's beat
# schedule and results) are housekeeping and are listed below them.
FLEET_APPS = ("core", "clusters", "hardware", "deployments", "provisioning")
ATTENTION_LIMIT = 25  # deployments that are not running, listed with their reason
RUNS_LIMIT = 20  # runs in progress shown
FAILURES_LIMIT = 10  # recent failed runs shown
REFRESH_SECONDS = 5  # how often the runs fragment is fetched again


def _by_status(queryset, choices, colours) -> list[dict]:
    """``[{status, count, badge}]`` in the order the choices declare, statuses with no row left out."""
    counts = dict(queryset.values_list("status").annotate(n=Count("pk")).order_by())
    return [
        {"status": value, "count": counts[value], "badge": status_badge(colours.get(value, "pending"), label)}
        for value, label in choices
        if counts.get(value)
    ]


def clusters_section(*, with_nodes: bool) -> dict:
    """Clusters by status; each cluster with its nodes and accelerators by model (three queries)."""
    clusters = list(Cluster.objects.order_by("name").values("pk", "name", "status", "reason"))
    # hardware counts capacity for every page that shows it (a cluster's page reads its own nodes the same way).
    nodes = accelerators_by_model(Node.objects.all()) if with_nodes else {}
    fleet_models: dict[str, dict] = {}
    for entry in nodes.values():
        for m in entry["models"]:
            fleet = fleet_models.setdefault(m["model"], {"model": m["model"], "total": 0, "free": 0})
            fleet["total"] += m["total"]
            fleet["free"] += m["free"]
    widest = max((m["total"] for m in fleet_models.values()), default=0)
    for cluster in clusters:
        cluster.update(nodes[cluster["pk"]] if with_nodes else {})
        cluster["badge"] = _badge(cluster["status"], ClusterStatus, CLUSTER_COLOURS)
        cluster["healthy"] = cluster["status"] == ClusterStatus.AVAILABLE
        for model in cluster.get("models", ()):
            model["bars"] = _bars(model["total"], model["free"], widest)
    return {
        "by_status": _by_status(Cluster.objects.all(), ClusterStatus.choices, CLUSTER_COLOURS),
        "clusters": clusters,
        "with_nodes": with_nodes,
        "models": [
            {**m, "bars": _bars(m["total"], m["free"], widest)}
            for m in sorted(fleet_models.values(), key=lambda m: m["model"])
        ],
    }


def _badge(value: str, choices, colours: dict) -> str:
    return status_badge(colours.get(value, "pending"), choices(value).label)


def deployments_section() -> dict:
    """Deployments by status (deleted ones left out) and those not running with their reason (two queries)."""
    live = Deployment.objects.exclude(status=DeploymentStatus.DELETED)
    attention = list(
        live.exclude(status=DeploymentStatus.RUNNING)
        .order_by("-updated_at")
        .values("pk", "name", "status", "reason", "cluster__name", "updated_at")[:ATTENTION_LIMIT]
    )
    for row in attention:
        row["badge"] = _badge(row["status"], DeploymentStatus, DEPLOYMENT_COLOURS)
    return {
        "by_status": _by_status(live, DeploymentStatus.choices, DEPLOYMENT_COLOURS),
        "attention": attention,
    }


def runs_in_progress() -> dict:
    """The active runs, oldest first, each with its current step (two queries)."""
    active = Run.objects.filter(status__in=RunStatus.active())
    current = RunStep.objects.filter(run=OuterRef("pk"), status__in=StepStatus.active()).order_by("order")
    runs = list(
        active.annotate(step=Subquery(current.values("title")[:1]))
        .order_by("created_at")
        .values("pk", "title", "kind", "status", "progress", "eta", "started_at", "step")[:RUNS_LIMIT]
    )
    for run in runs:
        run["percent"] = max(0, min(100, round(run["progress"] or 0)))
        run["badge"] = status_badge(run["status"], RunStatus(run["status"]).label)
    return {"runs": runs, "count": active.count(), "refresh_seconds": REFRESH_SECONDS}


def recent_failures() -> list[dict]:
    """The last failed runs with their cause: the run's error, else the failed step's message (one query)."""
    failed_step = RunStep.objects.filter(run=OuterRef("pk"), status=StepStatus.FAILED).order_by("order")
    failures = list(
        Run.objects.filter(status=RunStatus.FAILED)
        .annotate(
            step=Subquery(failed_step.values("title")[:1]),
            step_message=Subquery(failed_step.values("message")[:1]),
        )
        .order_by("-finished_at", "-created_at")
        .values("pk", "title", "kind", "error", "finished_at", "step", "step_message")[:FAILURES_LIMIT]
    )
    for failure in failures:
        failure["cause"] = failure["error"] or failure["step_message"] or "no cause recorded"
    return failures


def fleet(user) -> dict[str, Any]:
    """The sections this user may see, keyed by name; a section the user may not view is absent."""
    sections: dict[str, Any] = {}
    if user.has_perm("clusters.view_cluster"):
        sections["clusters"] = clusters_section(with_nodes=user.has_perm("hardware.view_node"))
    if user.has_perm("deployments.view_deployment"):
        sections["deployments"] = deployments_section()
    if user.has_perm("core.view_run"):
        sections["runs"] = runs_in_progress()
        sections["failures"] = recent_failures()
    return sections


def index(request):
    """The admin index with the dashboard above the fleet's apps and the housekeeping apps below them."""
    response = admin.site.index(request, extra_context={"fleet": fleet(request.user)})
    apps = response.context_data["app_list"]
    response.context_data["app_list"] = [app for app in apps if app["app_label"] in FLEET_APPS]
    response.context_data["housekeeping_apps"] = [app for app in apps if app["app_label"] not in FLEET_APPS]
    return response


def runs_fragment(request):
    """The runs-in-progress section alone, which the index page fetches again to move its progress bars."""
    if not request.user.has_perm("core.view_run"):
        raise PermissionDenied
    return TemplateResponse(request, "admin/fleet/runs.html", {"runs": runs_in_progress()})
