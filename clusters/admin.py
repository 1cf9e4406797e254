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
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.conf import settings
from django.contrib import admin
from django.utils.html import format_html

from core.admin import CheckedActions, DeleteThroughRun, ReadOnlyInline, start_each, status_badge
from core.fields import describe_stored

from . import extensions, services
from .api.serializers import ClusterUpdateSerializer
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


class ClusterEventInline(ReadOnlyInline):
    model = ClusterEvent
    fields = ("created_at", "kind", "old_status", "new_status", "message")
    readonly_fields = fields
    ordering = ("-created_at",)


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
            for name, errors in body.errors.items():
                for error in errors if isinstance(errors, list) else [errors]:
                    self.add_error(name if name in self.fields else None, str(error))
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


class ClusterDeletionForm(forms.Form):
    force = forms.BooleanField(
        required=False,
        label="Force (the API's force=true)",
        help_text="Delete even while deployments are active (their releases and namespaces are removed with the "
        "cluster's), and drop the record even if the cluster cannot be reached (then nothing is removed from it).",
    )


@admin.register(Cluster)
class ClusterAdmin(DeleteThroughRun, CheckedActions, admin.ModelAdmin):
    form = ClusterForm
    deletion_kind = "cluster.delete"
    deletion_action = "delete_clusters"
    deletion_form = ClusterDeletionForm
    list_display = ("name", "coloured_status", "platform", "server_url", "last_checked")
    list_filter = ("status", "platform")
    search_fields = ("name", "server_url")
    readonly_fields = (
        "status", "reason", "platform", "server_url", "credentials", "kubernetes_version", "not_available_since",
        "last_checked", "created_by", "created_at", "updated_at",
    )  # fmt: skip
    inlines = (ClusterEventInline,)
    actions = ("check_health_now", "rerun_registration", "delete_clusters")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("kubeconfig")

    def has_add_permission(self, request) -> bool:
        return False  # registration is a run: use the API or `manage.py register_cluster`

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Cluster) -> str:
        return status_badge(CLUSTER_COLOURS.get(obj.status, "pending"), obj.get_status_display())

    @admin.display(description="credentials")
    def credentials(self, obj: Cluster) -> str:
        return format_html("{}", describe_stored(obj, "kubeconfig"))

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
        releases = list(
            Release.objects.filter(cluster=obj)
            .exclude(status=ReleaseStatus.UNINSTALLED)
            .order_by("namespace", "name")
        )
        for release in releases:
            objects = Revision.objects.filter(release=release, number=release.current_revision).first()
            count = f", {len(objects.applied)} object(s)" if objects else ""
            lines.append(f"release {release.namespace}/{release.name} ({release.chart}{count}): uninstalled")
        for namespace in sorted({r.namespace for r in releases} - {own}):
            lines.append(f"namespace {namespace}: deleted")
        lines.append(
            f"BudCluster's namespace {own} (node-info collectors, BudCluster's service account) and its RBAC "
            "(the ClusterRole and binding setup granted; on OpenShift its SecurityContextConstraints): removed"
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

    def has_delete_permission(self, request, obj=None) -> bool:
        # The row is what records which objects the release put on the cluster: deleting it would leave them
        # running with nothing left to uninstall them. Releases go with their deployment or cluster.
        return False
