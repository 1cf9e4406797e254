"""Operators' console for clusters: coloured status, node counts, masked credentials, actions.

Apps built on clusters extend this admin (the hardware app registers a subclass with the node inventory inline
and the collection action); every action calls the same service function as the API and needs the same
permission: "Check health now" ``clusters.check_cluster`` (``GET /clusters/{id}/health``), "Re-run registration"
``clusters.change_cluster`` (``PATCH /clusters/{id}`` with a kubeconfig), deletion ``clusters.delete_cluster``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.html import format_html

from core.admin import CheckedActions, ReadOnlyInline, start_each, status_badge
from core.fields import describe_stored

from . import services
from .choices import ClusterStatus
from .models import Cluster, ClusterEvent, Release, Revision

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
    """Edits name, ingress URL and labels; a new kubeconfig goes through the same validation as the API."""

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
        if data.get("new_kubeconfig"):
            try:
                services.validate(data["new_kubeconfig"].encode(), data.get("new_context") or None)
            except services.RegistrationRefused as exc:
                self.add_error("new_kubeconfig", str(exc))
        return data


@admin.register(Cluster)
class ClusterAdmin(CheckedActions, admin.ModelAdmin):
    form = ClusterForm
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

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deletion goes through the deletion run
        return actions

    def has_add_permission(self, request) -> bool:
        return False  # registration is a run: use the API or `manage.py register_cluster`

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Cluster) -> str:
        return status_badge(CLUSTER_COLOURS.get(obj.status, "pending"), obj.get_status_display())

    @admin.display(description="credentials")
    def credentials(self, obj: Cluster) -> str:
        return format_html("{}", describe_stored(obj, "kubeconfig"))

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("new_kubeconfig"):
            run = services.replace_kubeconfig(
                obj, form.cleaned_data["new_kubeconfig"].encode(), form.cleaned_data.get("new_context") or None,
                user=request.user,
            )  # fmt: skip
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
    def delete_clusters(self, request, queryset) -> None:
        start_each(
            self, request, queryset, lambda c: services.request_delete(c, user=request.user),
            done="Deletion started for {count} cluster(s).",
        )  # fmt: skip

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
