"""Operators' console for deployments: coloured status and endpoint, workers, revisions and events, actions
(scale, roll back, delete, check health) and the plan preview (the same ``services.plan`` as the API).

Each action and view needs the permission of its API twin: Scale ``change_deployment`` (``PATCH``), Roll back
``rollback_deployment``, Delete ``delete_deployment``, Check health now ``change_deployment`` (the check writes the
deployment's status and workers, as the health beat does; there is no API call for it), the plan preview
``view_deployment`` (``POST /deployments/plan``), its Deploy button ``add_deployment`` (``POST /deployments/deploy``:
the same validation and ``services.start_deploy``, then the run's page opens).

The list shows each deployment's reason, node(s) (where its pods run, else where placement put them) and GPUs (from
the placed candidate, read by the database; the workers in one query for the page); a deployment's page links to
its current run (the one in progress, else the latest) and gives its last failed run's cause.

Deleting (the page's Delete button or the list action) never drops the row: after a confirmation page listing
what leaves the cluster (the namespace, the releases and their objects, the pods and the GPUs they hold) it starts
``services.start_delete``'s run, as ``DELETE /deployments/{id}`` does, and opens the run's page. A cluster's
deletion page lists the deployments on it through ``clusters.admin.describe_deletion``, and the clusters list
shows each cluster's deployment counts (this app's subclass of hardware's cluster admin).

Benchmarks: a list with the key numbers and the verdict against the targets as the badge (a run whose client was
the bottleneck shows *Client-bound* instead: its numbers are partly the client's), goodput, attainment and capacity
at SLO, and a read-only page with the summary table, the SLO verdict, the client's health, the confidence
intervals of repeated runs, the sweep and the plots inline (the images come from an admin view that checks the
view permission and renders PNG from the stored samples)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import (
    BooleanField,
    CharField,
    Count,
    ExpressionWrapper,
    OuterRef,
    Prefetch,
    Q,
    Subquery,
)
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast, Coalesce
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.text import Truncator
from django.utils.timezone import localtime

from clusters.admin import OverviewSection, data_table, describe_deletion
from clusters.choices import ClusterStatus, ReleaseStatus
from clusters.models import Cluster, Release
from core.admin import CheckedActions, DeleteThroughRun, ReadOnlyInline, run_link, status_badge
from core.api.errors import flatten_errors
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from hardware.admin import ClusterInventoryAdmin

from . import health, services
from .api.serializers import DeploySerializer
from .catalog import list_models
from .choices import BenchmarkStatus, DeploymentStatus, DeviceType
from .models import Benchmark, Deployment, DeploymentEvent, Worker

# POST /deployments/plan's permission (DeploymentViewSet.permission_map["plan"]).
PLAN_PERMISSION = "deployments.view_deployment"
# POST /deployments/deploy's permission (DeploymentViewSet.permission_map["deploy"]): the plan preview's Deploy.
DEPLOY_PERMISSION = "deployments.add_deployment"
REASON_CHARS = 80  # the deployments list cuts a reason here (the whole text is its tooltip and on the page)

STATUS_COLOURS = {
    DeploymentStatus.PENDING: "pending",
    DeploymentStatus.DEPLOYING: "running",
    DeploymentStatus.RUNNING: "succeeded",
    DeploymentStatus.DEGRADED: "cleaning_up",
    DeploymentStatus.FAILED: "failed",
    DeploymentStatus.DELETING: "cancelled",
    DeploymentStatus.DELETED: "skipped",
}


class WorkerInline(ReadOnlyInline):
    model = Worker
    fields = ("name", "node", "device", "phase", "ready", "restarts", "reason", "started_at", "updated_at")
    readonly_fields = fields


class DeploymentEventInline(ReadOnlyInline):
    model = DeploymentEvent
    fields = ("created_at", "kind", "old_status", "new_status", "message")
    readonly_fields = fields
    ordering = ("-created_at",)


class DeploymentActionForm(ActionForm):
    replicas = forms.IntegerField(required=False, min_value=1, max_value=256, help_text="for Scale")
    revision = forms.IntegerField(required=False, min_value=1, help_text="for Roll back")


class PlanForm(forms.Form):
    cluster = forms.ModelChoiceField(
        queryset=Cluster.objects.filter(status=ClusterStatus.AVAILABLE).defer("kubeconfig")
    )
    model = forms.ChoiceField(choices=[])
    name = forms.SlugField(initial="preview")
    device_type = forms.ChoiceField(choices=DeviceType.choices, initial=DeviceType.AUTO)
    replicas = forms.IntegerField(min_value=1, max_value=256, initial=1)
    context_len = forms.IntegerField(min_value=1, initial=4096)
    concurrency = forms.IntegerField(min_value=1, initial=16)
    dtype = forms.ChoiceField(
        choices=[(v, v) for v in ("auto", "bfloat16", "float16", "float32")], initial="auto"
    )
    quantization = forms.ChoiceField(
        choices=[("", "none"), *[(q, q) for q in ("fp8", "int8", "awq", "gptq", "int4")]], required=False
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(m.name, f"{m.name} ({m.params / 1e9:.1f} B)") for m in list_models()]


class DeploymentForm(forms.ModelForm):
    class Meta:
        model = Deployment
        fields = ()
        # The admin renders help texts as HTML: the model's "bud-<sanitised name>-..." would lose its <...> parts.
        help_texts = {"namespace": escape(Deployment._meta.get_field("namespace").help_text)}


def _deletion_lines(deployment: Deployment) -> list[str]:
    """What deleting ``deployment`` removes from its cluster, for the confirmation pages."""
    lines = [f"namespace {deployment.namespace}: deleted with everything in it"]
    releases = Release.objects.filter(
        cluster_id=deployment.cluster_id, namespace=deployment.namespace
    ).exclude(status=ReleaseStatus.UNINSTALLED)
    for release in releases.order_by("-created_at"):
        revision = release.revisions.filter(number=release.current_revision).first()
        applied = ", ".join(
            f"{o.get('kind')}/{o.get('name')}" for o in (revision.applied if revision else [])
        )
        lines.append(
            f"release {release.name} ({release.chart}): uninstalled" + (f" ({applied})" if applied else "")
        )
    for worker in deployment.workers.all():
        held = f", holding {worker.device}" if worker.device else ""
        lines.append(f"pod {worker.name} on node {worker.node or '(not scheduled)'}{held}: removed")
    if not deployment.workers.exists() and deployment.replicas:
        summary = (deployment.placement.get("candidate") or {}).get("summary")
        lines.append(
            f"{deployment.replicas} replica(s)" + (f" placed as {summary}" if summary else "") + ": removed"
        )
    lines.append("the deployment record stays, marked deleted (history)")
    return lines


@describe_deletion
def _deployments_on_cluster(cluster: Cluster) -> list[str]:
    deployments = Deployment.objects.filter(cluster=cluster).exclude(status=DeploymentStatus.DELETED)
    return [
        f"deployment {d.name} ({d.get_status_display()}, namespace {d.namespace}, {d.replicas} replica(s)): its "
        "releases, pods and GPUs are removed with the cluster's"
        for d in deployments.order_by("name")
    ]


CLUSTER_DEPLOYMENTS_SHOWN = 25  # deployments listed on a cluster's page (the filtered list has them all)


def _cluster_deployments(cluster: Cluster) -> OverviewSection:
    """The deployments on a cluster's page (deleted ones left out) with their status, reason and GPUs; one query."""
    rows = list(
        Deployment.objects.filter(cluster=cluster)
        .exclude(status=DeploymentStatus.DELETED)
        .order_by("name")
        .values(
            "pk", "name", "status", "reason", "model_name", "replicas", "ready_replicas", "endpoint_url",
            "placement__candidate__summary",
        )[: CLUSTER_DEPLOYMENTS_SHOWN + 1]
    )  # fmt: skip
    listing = reverse("admin:deployments_deployment_changelist")
    cells = [
        {
            "key": row["name"],
            "cells": (
                format_html(
                    '<a href="{}">{}</a>',
                    reverse("admin:deployments_deployment_change", args=[row["pk"]]),
                    row["name"],
                ),
                status_badge(
                    STATUS_COLOURS.get(row["status"], "pending"), DeploymentStatus(row["status"]).label
                ),
                format_html('<span class="reason">{}</span>', Truncator(row["reason"]).chars(300))
                if row["reason"]
                else "-",
                row["model_name"],
                f"{row['ready_replicas']}/{row['replicas']}",
                row["placement__candidate__summary"] or "-",
                row["endpoint_url"] or "-",
            ),
        }
        for row in rows[:CLUSTER_DEPLOYMENTS_SHOWN]
    ]
    return OverviewSection(
        30, "cluster-deployments", "Deployments", "admin/clusters/cluster/overview_table.html",
        {
            "columns": ("Deployment", "Status", "Reason", "Model", "Ready", "Placement", "Endpoint"),
            "rows": cells,
            "row_class": "cluster-deployment",
            "empty": "No deployments on this cluster.",
            "more": {
                "url": f"{listing}?cluster__id__exact={cluster.pk}",
                "text": f"All deployments on {cluster.name}",
            }
            if len(rows) > CLUSTER_DEPLOYMENTS_SHOWN
            else None,
        },
    )  # fmt: skip


class ClusterDeploymentsAdmin(ClusterInventoryAdmin):
    """The clusters admin (with hardware's inventory) plus each cluster's deployment counts in the list, for users
    who may view deployments. Subqueries, not a join: a join with deployments would multiply the node figures.
    A cluster's page lists its deployments, and its latest runs include theirs."""

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        if not request.user.has_perm("deployments.view_deployment"):
            return shown
        after = shown.index("accelerators") + 1 if "accelerators" in shown else len(shown)
        return (*shown[:after], "deployment_count", *shown[after:])

    def get_queryset(self, request):
        live = Deployment.objects.filter(cluster=OuterRef("pk")).exclude(status=DeploymentStatus.DELETED)
        return (
            super()
            .get_queryset(request)
            .annotate(
                _deployments=Coalesce(Subquery(_count(live)), 0),
                _running=Coalesce(Subquery(_count(live.filter(status=DeploymentStatus.RUNNING))), 0),
            )
        )

    @admin.display(description="deployments (running)", ordering="_deployments")
    def deployment_count(self, obj: Cluster) -> str:
        if not hasattr(obj, "_deployments"):
            return "-"
        return f"{obj._deployments} ({obj._running})"

    def overview_sections(self, request, obj: Cluster) -> list[OverviewSection]:
        sections = super().overview_sections(request, obj)
        if request.user.has_perm("deployments.view_deployment"):
            sections.append(_cluster_deployments(obj))
        return sections

    def run_subjects(self, obj: Cluster) -> Q:
        # Deploying, scaling and deleting on the cluster are its history too (deleted deployments' runs included).
        keys = Deployment.objects.filter(cluster=obj).annotate(key=Cast("pk", CharField())).values("key")
        theirs = Q(
            subject_type__app_label="deployments", subject_type__model="deployment", subject_id__in=keys
        )
        return super().run_subjects(obj) | theirs


def _count(queryset):
    """``queryset``'s row count as a one-value subquery."""
    return queryset.order_by().values("cluster").annotate(n=Count("pk")).values("n")


# hardware.admin registered its ClusterInventoryAdmin on import (above); this one adds to it.
admin.site.unregister(Cluster)
admin.site.register(Cluster, ClusterDeploymentsAdmin)


def _candidate(obj: Deployment) -> dict | None:
    """The placed candidate: annotated on the list's rows (whose placement is deferred), else from the row."""
    if hasattr(obj, "_candidate"):
        return obj._candidate or None
    return (obj.placement or {}).get("candidate")


def _runs_of(deployment: Deployment):
    return Run.objects.filter(
        subject_type=ContentType.objects.get_for_model(Deployment), subject_id=str(deployment.pk)
    )


@admin.register(Deployment)
class DeploymentAdmin(DeleteThroughRun, CheckedActions, admin.ModelAdmin):
    form = DeploymentForm
    deletion_kind = "deployment.delete"
    deletion_action = "delete_deployments"
    list_display = (
        "name",
        "coloured_status",
        "short_reason",
        "endpoint",
        "cluster",
        "model_name",
        "replicas_ready",
        "nodes",
        "gpus",
        "created_at",
    )
    list_filter = ("status", "cluster", "device_type", "engine")
    search_fields = ("name", "model_name", "namespace")
    date_hierarchy = "created_at"
    inlines = (WorkerInline, DeploymentEventInline)
    action_form = DeploymentActionForm
    actions = ("scale", "roll_back", "delete_deployments", "check_health_now")
    change_list_template = "admin/deployments/deployment/change_list.html"
    readonly_fields = (
        "name", "cluster", "namespace", "model_name", "device_type", "engine", "replicas", "ready_replicas",
        "engine_args", "image", "endpoint", "coloured_status", "reason", "current_run", "last_failure",
        "revision_table", "placement_summary", "config_table", "autoscaling_summary",
        "keep_on_failure", "credentials_state", "last_checked", "created_by", "created_at", "updated_at",
    )  # fmt: skip
    exclude = ("status", "endpoint_url", "placement", "model_spec", "release")

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("cluster", "release").defer("cluster__kubeconfig")
        if (getattr(request.resolver_match, "url_name", "") or "").endswith("changelist"):
            # The list's node and GPU columns: the workers' nodes (one query for the page) and the placed
            # candidate, read out of the placement document by the database (the whole document holds up to 50
            # per-node refusals and the runtime values, which the list does not show).
            workers = Worker.objects.only("deployment_id", "name", "node").order_by("name")
            qs = (
                qs.defer("placement", "model_spec")
                .annotate(_candidate=KeyTransform("candidate", "placement"))
                .prefetch_related(Prefetch("workers", queryset=workers))
            )
        return qs

    def has_add_permission(self, request) -> bool:
        # Deploying is a run, started from the plan preview's Deploy button (after the dry run), the API or
        # `manage.py demo`; a bare add form would skip the placement the run needs.
        return False

    # --- columns -----------------------------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Deployment) -> str:
        return status_badge(STATUS_COLOURS.get(obj.status, "pending"), obj.get_status_display())

    @admin.display(description="endpoint")
    def endpoint(self, obj: Deployment) -> str:
        if not obj.endpoint_url:
            return "-"
        return format_html('<a href="{0}/v1/models" target="_blank" rel="noopener">{0}</a>', obj.endpoint_url)

    @admin.display(description="ready")
    def replicas_ready(self, obj: Deployment) -> str:
        return f"{obj.ready_replicas}/{obj.replicas}"

    @admin.display(description="reason")
    def short_reason(self, obj: Deployment) -> str:
        if not obj.reason:
            return ""
        return format_html(
            '<span title="{}">{}</span>', obj.reason, Truncator(obj.reason).chars(REASON_CHARS)
        )

    @admin.display(description="node")
    def nodes(self, obj: Deployment) -> str:
        """Where its pods run; before there are any, where placement put them (marked planned)."""
        if obj.status == DeploymentStatus.DELETED:
            return "-"
        running = sorted({w.node for w in obj.workers.all() if w.node})
        if running:
            return ", ".join(running)
        planned = (_candidate(obj) or {}).get("nodes") or []
        return f"{', '.join(planned)} (planned)" if planned else "-"

    @admin.display(description="GPUs")
    def gpus(self, obj: Deployment) -> str:
        """The accelerators its replicas hold: count and model (``CPU`` for a CPU deployment)."""
        candidate = _candidate(obj)
        if obj.status == DeploymentStatus.DELETED or not candidate:
            return "-"
        if candidate.get("device_type") == DeviceType.CPU:
            return "CPU"
        model = candidate.get("accelerator_model") or candidate.get("device_type") or "accelerator"
        return f"{candidate.get('total_devices', 0)}x {model}"

    @admin.display(description="run")
    def current_run(self, obj: Deployment) -> str:
        """The run in progress on it, else its latest (one query)."""
        active = ExpressionWrapper(Q(status__in=RunStatus.active()), output_field=BooleanField())
        run = _runs_of(obj).annotate(_active=active).order_by("-_active", "-created_at").first()
        if run is None:
            return "- (none recorded)"
        return format_html("{}{}", "" if run.status in RunStatus.active() else "last: ", run_link(run))

    @admin.display(description="last failure")
    def last_failure(self, obj: Deployment) -> str:
        """The cause of its latest failed run: the run's error, else its failed step's message (one query)."""
        failed_step = RunStep.objects.filter(run=OuterRef("pk"), status=StepStatus.FAILED).order_by("order")
        run = (
            _runs_of(obj)
            .filter(status=RunStatus.FAILED)
            .annotate(_step=Subquery(failed_step.values("title")[:1]))
            .annotate(_message=Subquery(failed_step.values("message")[:1]))
            .order_by("-finished_at", "-created_at")
            .first()
        )
        if run is None:
            return "none"
        cause = run.error or run._message or "no cause recorded"
        when = localtime(run.finished_at or run.created_at).strftime("%Y-%m-%d %H:%M:%S")
        return format_html(
            '<span class="failure-cause">{}</span><br>{}{} · {}',
            cause,
            f"at step {run._step} · " if run._step else "",
            when,
            run_link(run),
        )

    @admin.display(description="revisions")
    def revision_table(self, obj: Deployment) -> str:
        rows = services.revisions(obj)
        if not rows:
            return "-"
        current = obj.release.current_revision if obj.release_id else None
        return format_html(
            "<table><tr><th>#</th><th>description</th><th>created</th><th>objects</th></tr>{}</table>",
            format_html_join(
                "",
                # No format specs here: format_html escapes each argument to a string first.
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (r.number, " (current)" if r.number == current else "", r.description,
                     localtime(r.created_at).strftime("%Y-%m-%d %H:%M:%S"),
                     ", ".join(f"{o['kind']}/{o['name']}" for o in r.applied))
                    for r in rows
                ),
            ),
        )  # fmt: skip

    @admin.display(description="config")
    def config_table(self, obj: Deployment) -> str:
        return data_table(obj.config)

    @admin.display(description="placement")
    def placement_summary(self, obj: Deployment) -> str:
        return (obj.placement.get("candidate") or {}).get("summary", "-")

    @admin.display(description="credentials")
    def credentials_state(self, obj: Deployment) -> str:
        from core.fields import describe_stored

        stored = describe_stored(obj, "credentials")
        return stored if stored != "not set" else "none held (moved into Kubernetes Secrets, or never given)"

    # --- actions -----------------------------------------------------------------------------------------------

    @admin.action(description="Scale to the replicas given below", permissions=["change"])
    def scale(self, request, queryset) -> None:
        replicas = request.POST.get("replicas")
        if not replicas:
            self.message_user(request, "Enter the number of replicas first.", messages.WARNING)
            return
        self._each(
            request, queryset, lambda d: services.start_update(d, replicas=int(replicas), user=request.user)
        )

    @admin.action(description="Roll back to the revision given below", permissions=["rollback"])
    def roll_back(self, request, queryset) -> None:
        revision = request.POST.get("revision")
        if not revision:
            self.message_user(request, "Enter the revision number first.", messages.WARNING)
            return
        self._each(request, queryset, lambda d: services.start_rollback(d, int(revision), user=request.user))

    @admin.action(
        description="Delete selected deployments (every object and the namespace)", permissions=["delete"]
    )
    def delete_deployments(self, request, queryset):
        return self.confirm_deletion(request, list(queryset), from_action=True)

    def start_deletion(self, request, obj: Deployment, options: dict):
        return services.start_delete(obj, user=request.user)

    def deletion_removes(self, obj: Deployment) -> list[str]:
        return _deletion_lines(obj)

    @admin.action(description="Check health now", permissions=["change"])
    def check_health_now(self, request, queryset) -> None:
        report = health.sweep(deployment_ids=list(queryset.values_list("pk", flat=True)))
        changed = ", ".join(f"{d}: {a} → {b}" for d, a, b in report["transitions"]) or "no status changed"
        self.message_user(request, f"Checked {report['checked']} deployment(s); {changed}.")

    def _each(self, request, queryset, start) -> None:
        started = 0
        for deployment in queryset.select_related("release"):
            try:
                run = start(deployment)
            except services.DeploymentRefused as exc:
                self.message_user(request, f"{deployment.name}: {exc}", messages.WARNING)
                continue
            started += 1
            url = reverse("admin:core_run_change", args=[run.pk])
            self.message_user(
                request, format_html('{}: run <a href="{}">{}</a> started', deployment.name, url, run.pk)
            )
        if not started:
            self.message_user(request, "No run started.", messages.WARNING)

    def has_rollback_permission(self, request) -> bool:
        return request.user.has_perm("deployments.rollback_deployment")

    # --- plan preview ------------------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view(self.plan_view)
        return [path("plan/", view, name="deployments_deployment_plan"), *super().get_urls()]

    def plan_view(self, request):
        """The plan preview: the same dry run as ``POST /deployments/plan`` (and its permission); nothing is
        created. After a plan that found a placement, a user who may deploy (``POST /deployments/deploy``'s
        permission) gets a Deploy button: its form carries the planned fields again plus ``_deploy=1``, and
        :meth:`deploy_from_plan` starts the deploy run and opens its page."""
        if not request.user.has_perm(PLAN_PERMISSION):
            raise PermissionDenied
        may_deploy = request.user.has_perm(DEPLOY_PERMISSION)
        if request.method == "POST" and request.POST.get("_deploy"):
            if not may_deploy:
                raise PermissionDenied
            return self.deploy_from_plan(request)
        form = PlanForm(request.POST or None)
        outcome = error = None
        if request.method == "POST" and form.is_valid():
            data = dict(form.cleaned_data)
            cluster = data.pop("cluster")
            name = data.pop("name")
            config = {k: v for k, v in data.items() if v not in ("", None)}
            try:
                outcome = services.plan(cluster, config, name=name).as_dict()
            except services.DeploymentRefused as exc:
                error = str(exc)
        return self._plan_page(request, form, outcome=outcome, error=error, may_deploy=may_deploy)

    def deploy_from_plan(self, request):
        """Deploy what was planned: the form is checked again, then the API's own validation (``DeploySerializer``)
        and service (``services.start_deploy``) decide, exactly as for ``POST /deployments/deploy``. Started: a
        redirect to the run's page. Refused (invalid, name taken, cluster not available, fits nowhere): the page
        again with the reason and the refusal's status; nothing is created."""
        form = PlanForm(request.POST)
        if not form.is_valid():
            return self._plan_page(
                request, form, error="Correct the fields below, then plan again.", status=400
            )
        data = form.cleaned_data
        body = {
            "cluster": data["cluster"].pk,
            "name": data["name"],
            **{k: v for k, v in data.items() if k not in ("cluster", "name") and v not in ("", None)},
        }
        deploy = DeploySerializer(data=body)
        if not deploy.is_valid():
            errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in flatten_errors(deploy.errors).items())
            return self._plan_page(request, form, error=f"Not deployed: {errors}", status=400)
        try:
            deployment, run = services.start_deploy(
                deploy.validated_data["cluster"],
                name=deploy.validated_data["name"],
                config=deploy.config(),
                credentials=deploy.credentials(),
                keep_on_failure=deploy.validated_data["keep_on_failure"],
                user=request.user,
            )
        except services.DeploymentRefused as exc:
            return self._plan_page(request, form, error=f"Not deployed: {exc}", status=exc.status)
        self.log_addition(request, deployment, f"Deploy requested from the plan preview: run {run.pk}")
        url = reverse("admin:core_run_change", args=[run.pk])
        self.message_user(
            request,
            format_html('Deploying {}: run <a href="{}">{}</a> started', deployment.name, url, run.pk),
            messages.SUCCESS,
        )
        if not request.user.has_perm("core.view_run"):
            # The run's page would answer 403: the deployment's page links to its run and shows its status.
            url = reverse("admin:deployments_deployment_change", args=[deployment.pk])
        return HttpResponseRedirect(url)

    def _plan_page(self, request, form, *, outcome=None, error=None, may_deploy=False, status: int = 200):
        context = {
            **self.admin_site.each_context(request),
            "title": "Plan a deployment (dry run)",
            "opts": self.model._meta,
            "form": form,
            "outcome": outcome,
            "error": error,
            "may_deploy": may_deploy,
        }
        return render(request, "admin/deployments/deployment/plan.html", context, status=status)


# --- benchmarks ------------------------------------------------------------------------------------------------

BENCHMARK_COLOURS = {
    BenchmarkStatus.PENDING: "pending",
    BenchmarkStatus.RUNNING: "running",
    BenchmarkStatus.SUCCEEDED: "succeeded",
    BenchmarkStatus.FAILED: "failed",
    BenchmarkStatus.CANCELLED: "cancelled",
}
_SUMMARY_METRICS = (
    ("TTFT (ms)", "ttft_ms"),
    ("TPOT (ms)", "tpot_ms"),
    ("ITL (ms)", "itl_ms"),
    ("E2E (ms)", "e2e_ms"),
    ("Output tokens/s per user", "output_throughput_per_user"),
)
_SUMMARY_STATS = ("mean", "median", "p25", "p75", "p95", "p99", "min", "max")


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@admin.register(Benchmark)
class BenchmarkAdmin(admin.ModelAdmin):
    list_display = (
        "id", "deployment", "coloured_status", "partial", "concurrency", "requests_ok", "mean_ttft",
        "p95_ttft", "mean_itl", "throughput", "goodput_column", "capacity", "passed", "created_at",
    )  # fmt: skip
    list_filter = ("status", "partial", "passed", "valid", "deployment")
    search_fields = ("deployment__name",)
    date_hierarchy = "created_at"
    fields = (
        "deployment", "coloured_status", "partial", "run_link", "error", "summary_table", "plot_images",
        "slo_table", "client_table", "confidence_table", "verdict", "error_table", "sweep_table",
        "settings_table", "options_table", "created_by", "created_at", "started_at", "finished_at",
    )  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("deployment")
        listing = (getattr(request.resolver_match, "url_name", "") or "").endswith("changelist")
        return qs.defer("samples") if listing else qs

    def has_add_permission(self, request) -> bool:
        return False  # benchmarks are runs: POST /deployments/{id}/benchmark or `manage.py benchmark`

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # A finished benchmark is history anyone with the permission may remove; one still measuring is its run's
        # to finish (cancel the run instead).
        if obj is not None and obj.status in (BenchmarkStatus.PENDING, BenchmarkStatus.RUNNING):
            return False
        return super().has_delete_permission(request, obj)

    # --- columns -----------------------------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Benchmark) -> str:
        # A benchmark that ran to the end but missed its targets is a failure to whoever reads the list; one whose
        # client was the bottleneck measured the client, whatever its targets say.
        if obj.status == BenchmarkStatus.SUCCEEDED and obj.valid is False:
            return status_badge("failed", "Client-bound")
        if obj.status == BenchmarkStatus.SUCCEEDED and obj.passed is not None:
            return (
                status_badge("succeeded", "Targets met")
                if obj.passed
                else status_badge("failed", "Targets missed")
            )
        return status_badge(BENCHMARK_COLOURS.get(obj.status, "pending"), obj.get_status_display())

    @admin.display(description="concurrency / rate")
    def concurrency(self, obj: Benchmark) -> str:
        options = obj.options or {}
        if options.get("rates"):
            return ",".join(f"{r:g}" for r in options["rates"]) + " req/s"
        if options.get("rate_search"):
            return f"from {options['rate_search']['start']:g} req/s until goodput drops"
        sweep = options.get("sweep")
        return ",".join(map(str, sweep)) if sweep else str(options.get("concurrency", "-"))

    @admin.display(description="goodput req/s", ordering="goodput")
    def goodput_column(self, obj: Benchmark) -> str:
        if obj.goodput is None:
            return "-"
        share = "" if obj.slo_attainment is None else f" ({obj.slo_attainment:.0%})"
        return f"{_num(obj.goodput, 2)}{share}"

    @admin.display(description="capacity at SLO", ordering="capacity_rps")
    def capacity(self, obj: Benchmark) -> str:
        return "-" if obj.capacity_rps is None else f"{obj.capacity_rps:g} req/s"

    @admin.display(description="ok / failed")
    def requests_ok(self, obj: Benchmark) -> str:
        if obj.successful_requests is None:
            return "-"
        return f"{obj.successful_requests} / {obj.failed_requests or 0}"

    @admin.display(description="mean TTFT ms", ordering="mean_ttft_ms")
    def mean_ttft(self, obj: Benchmark) -> str:
        return _num(obj.mean_ttft_ms)

    @admin.display(description="p95 TTFT ms", ordering="p95_ttft_ms")
    def p95_ttft(self, obj: Benchmark) -> str:
        return _num(obj.p95_ttft_ms)

    @admin.display(description="mean ITL ms", ordering="mean_itl_ms")
    def mean_itl(self, obj: Benchmark) -> str:
        return _num(obj.mean_itl_ms, 2)

    @admin.display(description="output tok/s", ordering="output_throughput")
    def throughput(self, obj: Benchmark) -> str:
        return _num(obj.output_throughput)

    # --- change page -------------------------------------------------------------------------------------------

    @admin.display(description="run")
    def run_link(self, obj: Benchmark) -> str:
        if obj.run_id is None:
            return "- (ran from manage.py benchmark)"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:core_run_change", args=[obj.run_id]), obj.run_id
        )

    @admin.display(description="summary")
    def summary_table(self, obj: Benchmark) -> str:
        s = obj.summary or {}
        if not s:
            return "-"
        head = format_html_join("", "<th>{}</th>", ((stat,) for stat in _SUMMARY_STATS))

        def cells(key: str) -> str:
            return format_html_join(
                "", "<td>{}</td>", ((_num(s.get(f"{st}_{key}"), 2),) for st in _SUMMARY_STATS)
            )

        rows = format_html_join(
            "", "<tr><th>{}</th>{}</tr>", ((lbl, cells(k)) for lbl, k in _SUMMARY_METRICS)
        )
        totals = (
            ("requests ok / failed", f"{s.get('successful_requests', 0)} / {s.get('failed_requests', 0)}"),
            ("duration (s)", _num(s.get("duration_s"), 2)),
            ("request throughput (req/s)", _num(s.get("request_throughput"), 2)),
            ("input throughput (tok/s)", _num(s.get("input_throughput"))),
            ("output throughput (tok/s)", _num(s.get("output_throughput"))),
            ("tokens in / out", f"{s.get('total_input_tokens', 0)} / {s.get('total_output_tokens', 0)}"),
        )
        return format_html(
            '<table><tr><th></th>{}</tr>{}</table><table style="margin-top:8px">{}</table>',
            head,
            rows,
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", totals),
        )

    @admin.display(description="SLO")
    def slo_table(self, obj: Benchmark) -> str:
        verdict = (obj.summary or {}).get("slo")
        if not verdict:
            return "no SLO" if obj.summary else "-"
        rows = [
            ("meets the SLO", f"{'yes' if verdict['passed'] else 'NO'} ({verdict['attainment']:.1%} of requests "
             f"met every target; needs {verdict['min_share']:.0%})"),
            ("goodput (req/s)", _num(verdict["goodput"], 2)),
            ("requests meeting all / total", f"{verdict['met']} / {verdict['total']}"),
        ]  # fmt: skip
        for key, target in verdict["targets"].items():
            rows.append((f"{key} ≤ {target:g}", f"{verdict['shares'].get(key, 0.0):.1%} of requests"))
        capacity = (obj.summary or {}).get("capacity")
        if capacity:
            rate = capacity.get("rate")
            rows.append(("capacity at SLO", "-" if rate is None else f"{rate:g} req/s"))
            rows.append(("limited by", capacity.get("limited_by") or "-"))
        rows.append(("latency measured from", verdict.get("measured_from", "scheduled send")))
        return format_html("<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))

    @admin.display(description="client")
    def client_table(self, obj: Benchmark) -> str:
        client = (obj.summary or {}).get("client")
        if not client:
            return "-"
        lag, loop = client.get("send_lag_ms") or {}, client.get("loop_delay_ms") or {}
        rows = [
            ("valid", "yes" if client.get("valid") else "NO: " + "; ".join(client.get("invalid_reasons") or [])),
            ("load processes", client.get("processes")),
            ("send lag ms (mean / p99 / max)", " / ".join(_num(lag.get(k), 1) for k in ("mean", "p99", "max"))),
            ("event-loop delay ms (mean / p99 / max)",
             " / ".join(_num(loop.get(k), 1) for k in ("mean", "p99", "max"))),
            ("CPU per load process", ", ".join(f"{c:g} %" for c in client.get("cpu_percent") or []) or "-"),
            ("limit (p99)", f"{client.get('lag_limit_ms', 0):g} ms"),
        ]  # fmt: skip
        return format_html("<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))

    @admin.display(description="confidence")
    def confidence_table(self, obj: Benchmark) -> str:
        intervals = (obj.summary or {}).get("confidence")
        if not intervals:
            return "- (one run; repeat for intervals)"
        return format_html(
            "<table><tr><th>figure</th><th>mean</th><th>low</th><th>high</th><th>level</th><th>runs</th></tr>"
            "{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        k,
                        _num(ci["mean"], 2),
                        _num(ci["low"], 2),
                        _num(ci["high"], 2),
                        f"{ci['level']:.0%}",
                        ci["n"],
                    )
                    for k, ci in intervals.items()
                ),
            ),
        )

    @admin.display(description="plots")
    def plot_images(self, obj: Benchmark) -> str:
        from .api.benchmarks import available_plots

        kinds = available_plots(obj) if obj.samples else []
        if not kinds:
            return "- (nothing measured yet)"
        return format_html_join(
            "",
            '<img src="{}" alt="{} plot" style="max-width:48%;margin:4px;border:1px solid #ddd">',
            (
                (reverse("admin:deployments_benchmark_plot", args=[obj.pk, kind, "png"]), kind)
                for kind in kinds
            ),
        )

    @admin.display(description="targets")
    def verdict(self, obj: Benchmark) -> str:
        s = obj.summary or {}
        checks = s.get("targets") or {}
        if not checks:
            return "no targets" if s else "-"
        return format_html(
            "{} (margin {})<table><tr><th>target</th><th>value</th><th>limit</th><th>measured</th>"
            "<th>passed</th></tr>{}</table>",
            "PASSED" if s.get("passed") else "FAILED",
            f"{s.get('target_margin', obj.margin):.0%}",  # formatted here: format_html takes no format specs
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (k, _num(c["target"], 2), _num(c["limit"], 2), _num(c["measured"], 2), c["passed"])
                    for k, c in checks.items()
                ),
            ),
        )

    @admin.display(description="errors")
    def error_table(self, obj: Benchmark) -> str:
        errors = (obj.summary or {}).get("errors") or []
        if not errors:
            return "none"
        return format_html(
            "<table><tr><th>count</th><th>message</th></tr>{}</table>",
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td></tr>", ((e["count"], e["message"]) for e in errors)
            ),
        )

    @admin.display(description="settings")
    def settings_table(self, obj: Benchmark) -> str:
        return data_table(obj.settings)

    @admin.display(description="options")
    def options_table(self, obj: Benchmark) -> str:
        return data_table(obj.options)

    @admin.display(description="sweep")
    def sweep_table(self, obj: Benchmark) -> str:
        if not obj.sweep:
            return "-"
        by_rate = (obj.summary or {}).get("sweep_kind") == "rate"

        def point(p: dict) -> tuple:
            slo = p.get("slo") or {}
            return (
                f"{p.get('request_rate'):g} req/s"
                if by_rate and p.get("request_rate")
                else p.get("concurrency"),
                p.get("successful_requests"),
                p.get("failed_requests"),
                _num(p.get("request_throughput"), 2),
                _num(p.get("output_throughput")),
                _num(p.get("mean_ttft_ms")),
                _num(p.get("p99_ttft_ms")),
                _num(p.get("p99_ttft_from_scheduled_ms")),
                _num(p.get("mean_itl_ms"), 2),
                _num(p.get("goodput"), 2),
                f"{slo['attainment']:.1%}" if slo else "-",
                "yes" if p.get("valid", True) else "NO (client-bound)",
            )

        return format_html(
            "<table><tr><th>{}</th><th>ok / failed</th><th>req/s</th><th>output tok/s</th>"
            "<th>mean TTFT ms</th><th>p99 TTFT ms</th><th>p99 TTFT from scheduled ms</th><th>mean ITL ms</th>"
            "<th>goodput req/s</th><th>met SLO</th><th>valid</th></tr>{}</table>",
            "offered rate" if by_rate else "concurrency",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                "<td>{}</td><td>{}</td><td>{}</td></tr>",
                (point(p) for p in obj.sweep),
            ),
        )  # fmt: skip

    # --- plot images -------------------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view(self.plot_view)
        return [
            path("<int:pk>/plots/<str:kind>.<str:fmt>", view, name="deployments_benchmark_plot"),
            *super().get_urls(),
        ]

    def plot_view(self, request, pk: int, kind: str, fmt: str):
        """One plot of a benchmark (PNG or SVG), for users who may view benchmarks."""
        from .api.benchmarks import plot_response

        obj = self.get_object(request, str(pk))
        if obj is None:
            raise Http404(f"no benchmark {pk}")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        if fmt not in ("png", "svg"):
            raise Http404("plots are png or svg")
        return plot_response(obj, kind, fmt)
