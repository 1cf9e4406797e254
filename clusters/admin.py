"""Operators' console for clusters: coloured status, node counts, masked credentials, actions.

Apps built on clusters extend this admin (the hardware app registers a subclass with the node inventory inline
and the collection action); every action calls the same service function as the API and needs the same
permission: "Check health now" ``clusters.check_cluster`` (``GET /clusters/{id}/health``), "Re-run registration"
``clusters.change_cluster`` (``PATCH /clusters/{id}`` with a kubeconfig), deletion ``clusters.delete_cluster``
(``DELETE /clusters/{id}``). The edit form is checked by the API's own ``ClusterUpdateSerializer`` (name, ingress
URL through the outbound-address guard, labels) and saved by ``services.update_cluster``, as a ``PATCH`` is.

Deleting a cluster (its page's Delete button or the list action) starts the deletion run after a confirmation page
that lists what leaves the cluster: the releases BudCluster installed (collectors, model runtimes) and their
namespaces, BudCluster's own namespace and RBAC; apps above this one add theirs (the deployments on it, the cloud
resources Terraform destroys) through :func:`describe_deletion`, as they extend the API through
``clusters.extensions``. ``force`` is offered as the API offers it.

A cluster's page opens with what an operator reads first, the editable fields after: its status with the reason,
then the sections the apps built on clusters add through :meth:`ClusterAdmin.overview_sections` (hardware: the
capacity by accelerator model; deployments: the deployments on it), its latest runs and events. Each section is
one query however large the cluster, so the page costs the same few queries for a node or a thousand. Structured
values (labels, and the apps' taints, allocatable and requested resources) are tables (:func:`data_table`) and sizes
are in GiB (:func:`human_bytes`), never raw JSON or bytes.

"Register cluster" is the add page (permission ``clusters.add_cluster``, as ``POST /clusters/register``): a
kubeconfig upload checked by the API's own serializer and ``services.register_cluster``; it starts the
registration run and opens the run's page. A refusal shows the form again with the service's words and creates
nothing; the kubeconfig is never rendered back (a file input has no value, and no message quotes it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, OuterRef, Q, Subquery
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.admin import CheckedActions, DeleteThroughRun, ReadOnlyInline, start_each, status_badge
from core.choices import RunStatus, StepStatus
from core.fields import describe_stored
from core.models import Run, RunStep

from . import extensions, services
from .api.serializers import ClusterRegisterFormSerializer, ClusterUpdateSerializer
from .choices import ClusterStatus, ReleaseStatus
from .models import Cluster, ClusterEvent, Release, Revision

# What deleting a cluster removes of the apps built on clusters (each returns lines for the confirmation page).
DeletionDescriber = Callable[[Cluster], list[str]]
_DELETION_DESCRIBERS: list[DeletionDescriber] = []


def describe_deletion(describer: DeletionDescriber) -> DeletionDescriber:
    """Register what an app above clusters loses when a cluster is deleted (usable as a decorator)."""
    if describer not in _DELETION_DESCRIBERS:
        _DELETION_DESCRIBERS.append(describer)
    return describer


CLUSTER_COLOURS = {
    ClusterStatus.AVAILABLE: "succeeded",
    ClusterStatus.NOT_AVAILABLE: "cleaning_up",
    ClusterStatus.ERROR: "failed",
    ClusterStatus.REGISTERING: "running",
    ClusterStatus.PROVISIONING: "running",
    ClusterStatus.DELETING: "cancelled",
}
EVENTS_SHOWN = 20  # a cluster's latest events on its page (the API pages through all of them)
RUNS_SHOWN = 10  # its latest runs (the run list has the rest)


# --- values for people ------------------------------------------------------------------------------------------

GIB = 1024**3
MIB = 1024**2


def human_bytes(value: Any) -> str:
    """A size in bytes as an operator reads it: GiB (MiB below one GiB), ``-`` when unknown."""
    if value is None or value == "" or isinstance(value, bool):
        return "-"
    try:
        size = float(value)
    except (TypeError, ValueError):
        return str(value)
    if abs(size) >= GIB:
        return f"{size / GIB:,.1f} GiB"
    return f"{size / MIB:,.0f} MiB" if size else "0 GiB"


def human_cores(millicores: Any) -> str:
    """CPU in cores (``2.5 cores``) from Kubernetes millicores, ``-`` when unknown."""
    if millicores is None or millicores == "" or isinstance(millicores, bool):
        return "-"
    try:
        cores = float(millicores) / 1000
    except (TypeError, ValueError):
        return str(millicores)
    return f"{cores:,.2f}".rstrip("0").rstrip(".") + " cores"


# Keys whose suffix names the unit: the value is shown in human units and the key without its suffix.
_UNITS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("_bytes", human_bytes),
    ("_mib", lambda v: human_bytes(v * MIB) if isinstance(v, int | float) else str(v)),
    ("_millicores", human_cores),
)


def _cell(key: str, value: Any) -> tuple[str, str]:
    """``(label, shown value)`` of one entry of a mapping."""
    for suffix, shown in _UNITS:
        if key.endswith(suffix) and not isinstance(value, dict | list):
            return key[: -len(suffix)] or key, shown(value)
    return key, data_table(value)


def data_table(value: Any, *, empty: str = "-") -> SafeString | str:
    """A stored JSON value as an operator reads it, never as raw JSON: a mapping is a two-column table (nested
    values nest), a list of mappings a table with a column per key (a node's taints), a list of plain values one
    comma-separated line, sizes (``*_bytes``, ``*_mib``) in GiB and CPU (``*_millicores``) in cores."""
    if value is None or value == {} or value == []:
        return empty
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        rows = (_cell(str(key), item) for key, item in value.items())
        return format_html(
            '<table class="data-table"><tbody>{}</tbody></table>',
            format_html_join("", '<tr><th scope="row">{}</th><td>{}</td></tr>', rows),
        )
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        columns: list[str] = []
        for item in value:
            columns.extend(key for key in item if key not in columns)
        head = format_html_join("", '<th scope="col">{}</th>', ((c,) for c in columns))
        body = format_html_join(
            "",
            "<tr>{}</tr>",
            (
                (format_html_join("", "<td>{}</td>", ((_cell(c, item.get(c))[1],) for c in columns)),)
                for item in value
            ),
        )
        return format_html(
            '<table class="data-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body
        )
    if isinstance(value, list):
        return format_html_join(", ", "{}", ((data_table(item),) for item in value))
    return str(value)


# --- the cluster's page: sections before the fields -------------------------------------------------------------


@dataclass(frozen=True)
class OverviewSection:
    """A block at the top of a cluster's page: ``template`` rendered with ``section`` = ``context``; sections show
    in ``order`` (status 10, capacity 20, deployments 30, runs 80, events 90)."""

    order: int
    id: str
    title: str
    template: str
    context: dict[str, Any] = field(default_factory=dict)


def _run_rows(runs) -> list[dict]:
    """The latest runs with their current step (or the failed one) and cause, in one query."""
    active = RunStep.objects.filter(run=OuterRef("pk"), status__in=StepStatus.active()).order_by("order")
    failed = RunStep.objects.filter(run=OuterRef("pk"), status=StepStatus.FAILED).order_by("order")
    rows = list(
        runs.annotate(
            step=Subquery(active.values("title")[:1]),
            failed_step=Subquery(failed.values("title")[:1]),
            failed_message=Subquery(failed.values("message")[:1]),
        )
        .order_by("-created_at")
        .values(
            "pk", "kind", "title", "status", "progress", "error", "created_at", "started_at", "finished_at",
            "step", "failed_step", "failed_message",
        )[:RUNS_SHOWN]
    )  # fmt: skip
    for row in rows:
        row["badge"] = status_badge(row["status"], RunStatus(row["status"]).label)
        row["percent"] = max(0, min(100, round(row["progress"] or 0)))
        row["step"] = row["step"] or row["failed_step"]
        if row["status"] == RunStatus.FAILED:
            row["cause"] = row["error"] or row["failed_message"] or "no cause recorded"
    return rows


# --- forms ------------------------------------------------------------------------------------------------------


def _add_errors(form: forms.Form, errors: dict, fields: dict[str, str]) -> None:
    """A serializer's errors on the form: each on the field it names (``fields`` renames), the rest on top."""
    for name, problems in errors.items():
        target = fields.get(name, name)
        for problem in problems if isinstance(problems, list) else [problems]:
            form.add_error(target if target in form.fields else None, str(problem))


class ClusterForm(forms.ModelForm):
    """Edits name, ingress URL and labels; everything goes through the API's validation (the same serializer, the
    same kubeconfig checks), so the console cannot store what the API refuses."""

    new_kubeconfig = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "autocomplete": "off"}),
        help_text="Paste a kubeconfig to replace the stored one; it is validated and verification re-runs.",
    )
    new_context = forms.CharField(required=False, help_text="Context to use from the new kubeconfig")

    class Meta:
        model = Cluster
        fields = ("name", "ingress_url", "labels")

    def clean(self):
        data = super().clean()
        given = {name: data[name] for name in ("name", "ingress_url", "labels") if name in data}
        body = ClusterUpdateSerializer(self.instance, data=given, partial=True)
        if not body.is_valid():
            _add_errors(self, body.errors, {})
        if data.get("new_kubeconfig"):
            try:
                checked = services.validate(data["new_kubeconfig"].encode(), data.get("new_context") or None)
            except services.RegistrationRefused as exc:
                self.add_error("new_kubeconfig", str(exc))
            else:
                # update_cluster refuses a server another cluster has: say so here, not as an error page.
                existing, _replaceable = services.find_duplicate(checked.server, exclude_pk=self.instance.pk)
                if existing is not None:
                    self.add_error(
                        "new_kubeconfig", f"cluster {existing.name!r} is already registered with this server"
                    )
        return data


class _OptionalJSONField(forms.JSONField):
    def prepare_value(self, value):
        return "" if value is None else super().prepare_value(value)  # an empty box, not "null"


class ClusterRegisterForm(forms.Form):
    """``POST /clusters/register`` as a form: the field names of the console's contract, checked by the API's own
    serializer (``ClusterRegisterFormSerializer``); the service checks the kubeconfig itself and the name and
    server against the registered clusters."""

    name = forms.CharField(max_length=100, help_text="Unique name (letters, digits, '.', '_', '-')")
    kubeconfig = forms.FileField(
        error_messages={"required": "a kubeconfig file is required", "empty": "the kubeconfig file is empty"},
        help_text=f"The cluster's kubeconfig file (at most {human_bytes(settings.KUBECONFIG_MAX_BYTES)}); "
        "stored encrypted. Users that run a command (exec, auth-provider) or read local files are refused.",
    )
    context = forms.CharField(
        required=False, max_length=512, help_text="Context to use (default: the kubeconfig's current-context)"
    )
    ingress_url = forms.CharField(
        required=False, max_length=500, label="Ingress URL",
        help_text="Base URL of the cluster's ingress (optional)",
    )  # fmt: skip
    labels = _OptionalJSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"team": "ml", "region": "eu-west"}'}),
        help_text="A JSON object of string keys and string values (optional)",
    )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data  # the API would refuse the same body; its errors would only repeat these
        body = ClusterRegisterFormSerializer(
            data={
                "name": data.get("name", ""),
                "kubeconfig_file": data.get("kubeconfig"),
                "context": data.get("context") or "",
                "ingress_url": data.get("ingress_url") or "",
                "labels": data.get("labels") or {},
            }
        )
        if not body.is_valid():
            _add_errors(self, body.errors, {"kubeconfig_file": "kubeconfig", "non_field_errors": "__all__"})
            return data
        data["validated"] = body.validated_data
        return data


# Which field a registration refusal is about (the rest show above the form).
_REFUSAL_FIELDS = {
    services.RegistrationRefused.Code.KUBECONFIG_REQUIRED: "kubeconfig",
    services.RegistrationRefused.Code.KUBECONFIG_TOO_LARGE: "kubeconfig",
    services.RegistrationRefused.Code.KUBECONFIG_INVALID: "kubeconfig",
    services.RegistrationRefused.Code.SERVER_REGISTERED: "kubeconfig",
    services.RegistrationRefused.Code.NAME_TAKEN: "name",
}


class ClusterDeletionForm(forms.Form):
    force = forms.BooleanField(
        required=False,
        label="Force (the API's force=true)",
        help_text="Delete even while deployments are active (their releases and namespaces are removed with the "
        "cluster's), and drop the record even if the cluster cannot be reached (then nothing is removed from it).",
    )


# --- admins -----------------------------------------------------------------------------------------------------

_OVERVIEW = "admin/clusters/cluster"  # the overview sections' templates
_EDITABLE = ("name", "ingress_url", "labels", "new_kubeconfig", "new_context")
_RECORD = (
    "platform", "server_url", "context_name", "credentials", "kubernetes_version", "created_by", "created_at",
    "updated_at",
)  # fmt: skip


@admin.register(Cluster)
class ClusterAdmin(DeleteThroughRun, CheckedActions, admin.ModelAdmin):
    form = ClusterForm
    change_form_template = "admin/clusters/cluster/change_form.html"
    deletion_kind = "cluster.delete"
    deletion_action = "delete_clusters"
    deletion_form = ClusterDeletionForm
    list_display = ("name", "coloured_status", "platform", "server_url", "last_checked")
    list_filter = ("status", "platform")
    search_fields = ("name", "server_url")
    readonly_fields = (
        "status", "reason", "platform", "server_url", "context_name", "credentials", "kubernetes_version",
        "not_available_since", "last_checked", "created_by", "created_at", "updated_at", "labels_table",
    )  # fmt: skip
    # Events are a section at the top of the page (the latest ones); apps above add their inlines (the nodes).
    inlines = ()
    actions = ("check_health_now", "rerun_registration", "delete_clusters")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("kubeconfig")

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": _EDITABLE})]
        if not self.has_change_permission(request, obj):
            # Read-only: the labels as a table, and no kubeconfig fields to fill in.
            return [
                (None, {"fields": ("name", "ingress_url", "labels_table")}),
                ("Record", {"fields": _RECORD}),
            ]
        return [("Settings", {"fields": _EDITABLE}), ("Record", {"fields": _RECORD})]

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Cluster) -> str:
        return status_badge(CLUSTER_COLOURS.get(obj.status, "pending"), obj.get_status_display())

    @admin.display(description="credentials")
    def credentials(self, obj: Cluster) -> str:
        return format_html("{}", describe_stored(obj, "kubeconfig"))

    @admin.display(description="labels")
    def labels_table(self, obj: Cluster) -> str:
        return data_table(obj.labels, empty="none")

    # --- the page's overview -----------------------------------------------------------------------------------

    def overview_sections(self, request, obj: Cluster) -> list[OverviewSection]:
        """What the cluster's page shows before its fields; subclasses add theirs (``super()`` first)."""
        status = {
            "badge": self.coloured_status(obj),
            "cluster": obj,
            "healthy": obj.status == ClusterStatus.AVAILABLE,
            "labels": data_table(obj.labels, empty="none"),
        }
        events = ClusterEvent.objects.filter(cluster=obj).order_by("-created_at", "-id")[:EVENTS_SHOWN]
        sections = [
            OverviewSection(10, "cluster-status", "Status", f"{_OVERVIEW}/overview_status.html", status),
            OverviewSection(
                90, "cluster-events", "Latest events", f"{_OVERVIEW}/overview_events.html",
                {"events": list(events), "limit": EVENTS_SHOWN},
            ),
        ]  # fmt: skip
        if request.user.has_perm("core.view_run"):
            runs = {"runs": _run_rows(Run.objects.filter(self.run_subjects(obj))), "limit": RUNS_SHOWN}
            sections.append(
                OverviewSection(80, "cluster-runs", "Latest runs", f"{_OVERVIEW}/overview_runs.html", runs)
            )
        return sections

    def run_subjects(self, obj: Cluster) -> Q:
        """Which runs are the cluster's: its own (registration, collection, deletion); apps above add the runs of
        what they keep on it."""
        return Q(subject_type__app_label="clusters", subject_type__model="cluster", subject_id=str(obj.pk))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and not add:
            context["overview"] = sorted(self.overview_sections(request, obj), key=lambda s: s.order)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- register (the add page) -------------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """The "Register cluster" page: ``POST /clusters/register`` from a form with a kubeconfig upload."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ClusterRegisterForm(
            request.POST if request.method == "POST" else None,
            request.FILES if request.method == "POST" else None,
        )
        status = 200
        if request.method == "POST":
            status = 400
            if form.is_valid():
                try:
                    run = self._register(request, form.cleaned_data["validated"])
                except services.RegistrationRefused as exc:
                    form.add_error(_REFUSAL_FIELDS.get(exc.code), str(exc))
                    status = exc.status
                else:
                    return self._open_run(request, run)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Register a cluster",
            "form": form,
            "has_view_permission": self.has_view_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/clusters/cluster/register.html", context, status=status)

    def _register(self, request, data: dict) -> Run:
        raw = services.read_kubeconfig_upload(upload=data["kubeconfig_file"])
        cluster, run = services.register_validated(data, raw, request.user)
        self.log_addition(request, cluster, [{"added": {}}])
        return run

    def _open_run(self, request, run: Run) -> HttpResponseRedirect:
        url = reverse("admin:core_run_change", args=[run.pk])
        self.message_user(
            request,
            format_html('Registration started: run <a href="{}">{}</a>', url, run.pk),
            messages.SUCCESS,
        )
        if not request.user.has_perm("core.view_run"):
            # The run's page would answer 403: the cluster's own page shows the status as the run moves it.
            return HttpResponseRedirect(reverse("admin:clusters_cluster_change", args=[run.subject_id]))
        return HttpResponseRedirect(url)

    # --- saving ------------------------------------------------------------------------------------------------

    def save_model(self, request, obj, form, change) -> None:
        # What PATCH /clusters/{id} does: the changed fields, and a new kubeconfig re-verified by a run.
        changes = {
            k: form.cleaned_data[k] for k in form.changed_data if k in ("name", "ingress_url", "labels")
        }
        kubeconfig = form.cleaned_data.get("new_kubeconfig")
        run = services.update_cluster(
            obj, changes, kubeconfig=kubeconfig.encode() if kubeconfig else None,
            context=form.cleaned_data.get("new_context") or None, user=request.user,
        )  # fmt: skip
        if run is not None:
            self.message_user(request, f"Kubeconfig replaced; verification run {run.pk} started.")

    @admin.action(description="Check health now", permissions=["check"])
    def check_health_now(self, request, queryset) -> None:
        report = services.sweep(cluster_ids=list(queryset.values_list("pk", flat=True)))
        changed = ", ".join(f"{n}: {a} → {b}" for n, a, b in report.transitions) or "no status changed"
        self.message_user(
            request, f"Checked {report.checked} cluster(s) in {report.seconds:.1f}s; {changed}."
        )

    @admin.action(description="Re-run registration (verify again)", permissions=["change"])
    def rerun_registration(self, request, queryset) -> None:
        start_each(
            self, request, queryset, lambda c: services.rerun_registration(c, user=request.user),
            done="Registration re-run for {count} cluster(s).",
        )  # fmt: skip

    @admin.action(description="Delete selected clusters (runs the deletion workflow)", permissions=["delete"])
    def delete_clusters(self, request, queryset):
        return self.confirm_deletion(request, list(queryset), from_action=True)

    # --- deletion ----------------------------------------------------------------------------------------------

    def start_deletion(self, request, obj: Cluster, options: dict):
        return services.request_delete(obj, force=bool(options.get("force")), user=request.user)

    def deletion_removes(self, obj: Cluster) -> list[str]:
        lines: list[str] = []
        active = extensions.active_deployments(obj)
        if active:
            lines.append(
                f"{active} active deployment(s): deletion is refused unless forced; forced, they are removed "
                "with the releases below"
            )
        for describer in _DELETION_DESCRIBERS:
            lines.extend(describer(obj))
        own = getattr(settings, "COLLECTOR_NAMESPACE", "bud-system")
        # What the teardown playbook removes (without playbooks, the teardown step removes the collectors').
        playbook = (
            services.setup_namespaces() if getattr(settings, "CLUSTER_SETUP_PLAYBOOKS", True) else [own]
        )
        every = list(Release.objects.filter(cluster=obj).order_by("namespace", "name"))
        releases = [r for r in every if r.status != ReleaseStatus.UNINSTALLED]
        applied = dict(
            Revision.objects.filter(release__in=releases, number=F("release__current_revision")).values_list(
                "release_id", "applied"
            )
        )
        for release in releases:
            count = f", {len(applied[release.pk])} object(s)" if release.pk in applied else ""
            lines.append(f"release {release.namespace}/{release.name} ({release.chart}{count}): uninstalled")
        # Teardown deletes the namespaces of every release the cluster ever had (their Secrets and PVCs go
        # with them), uninstalled ones included.
        for namespace in sorted({r.namespace for r in every} - set(playbook)):
            lines.append(f"namespace {namespace}: deleted")
        lines.append(
            f"BudCluster's namespaces {', '.join(playbook)} (node-info collectors, BudCluster's service account, "
            "what runs there) and its RBAC (the ClusterRole and binding setup granted; on OpenShift its "
            "SecurityContextConstraints): removed"
        )
        lines.append("the cluster record with its events and node inventory (its runs stay)")
        return lines

    def has_check_permission(self, request) -> bool:
        return request.user.has_perm("clusters.check_cluster")


class RevisionInline(ReadOnlyInline):
    model = Revision
    fields = ("number", "description", "created_at")
    readonly_fields = fields


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ("name", "namespace", "cluster", "chart", "status", "current_revision", "updated_at")
    list_filter = ("status", "chart", "cluster")
    readonly_fields = ("cluster", "name", "namespace", "chart", "status", "current_revision", "created_at")
    inlines = (RevisionInline,)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a record of what the gateway applied: nothing on it is edited by hand (no Save button)

    def has_delete_permission(self, request, obj=None) -> bool:
        # The row is what records which objects the release put on the cluster: deleting it would leave them
        # running with nothing left to uninstall them. Releases go with their deployment or cluster.
        return False
