"""Admin of the provisioning app: credentials with write-only secrets, provisioning runs with their plan,
per-resource progress and the (redacted) Terraform and Ansible event logs, approve/cancel actions (approval goes
through ``services.approve``, as the API's and ``manage.py approve_run``'s: its permissions, no self-approval)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from core import workflow
from core.admin import CheckedActions, status_badge
from core.fields import describe_stored
from core.models import RunEvent, RunStep

from . import services
from .choices import CREDENTIAL_SECRET_FIELDS, ProvisioningStatus
from .models import CloudCredential, Provisioning

_SECRET_NAMES = sorted({n for req, opt in CREDENTIAL_SECRET_FIELDS.values() for n in (*req, *opt)})


class CloudCredentialForm(forms.ModelForm):
    """Secret fields are write-only: empty inputs keep the stored values; nothing is ever rendered back."""

    class Meta:
        model = CloudCredential
        fields = ("name", "provider", "region", "tenant_id", "subscription_id", "description")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in _SECRET_NAMES:
            self.fields[name] = forms.CharField(
                required=False,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                help_text="Write-only; leave empty to keep the stored value.",
            )

    def clean(self):
        data = super().clean()
        provider = data.get("provider")
        if provider in CREDENTIAL_SECRET_FIELDS:
            required, _optional = CREDENTIAL_SECRET_FIELDS[provider]
            stored = (self.instance.secret or {}) if self.instance.pk else {}
            for name in required:
                if not data.get(name) and not stored.get(name):
                    self.add_error(name, f"required for {provider}")
        return data

    def save(self, commit: bool = True):
        credential = super().save(commit=False)
        required, optional = CREDENTIAL_SECRET_FIELDS[credential.provider]
        secret = dict(credential.secret or {}) if credential.pk else {}
        secret = {k: v for k, v in secret.items() if k in (*required, *optional)}
        for name in (*required, *optional):
            if self.cleaned_data.get(name):
                secret[name] = self.cleaned_data[name]
        credential.secret = secret
        if commit:
            credential.save()
        return credential


@admin.register(CloudCredential)
class CloudCredentialAdmin(admin.ModelAdmin):
    form = CloudCredentialForm
    list_display = ("name", "provider", "region", "secret_status", "created_by", "created_at")
    list_filter = ("provider",)
    search_fields = ("name",)
    readonly_fields = ("secret_status", "created_by", "created_at", "updated_at")

    @admin.display(description="secret")
    def secret_status(self, obj: CloudCredential) -> str:
        return describe_stored(obj, "secret")

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def delete_model(self, request, obj) -> None:
        try:
            services.delete_credential(obj)
        except services.ProvisioningRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_queryset(self, request, queryset) -> None:
        for credential in queryset:
            self.delete_model(request, credential)


PROVISIONING_COLOURS = {
    ProvisioningStatus.PROVISIONED: "succeeded",
    ProvisioningStatus.FAILED: "failed",
    ProvisioningStatus.CANCELLED: "cancelled",
    ProvisioningStatus.AWAITING_APPROVAL: "waiting",
    ProvisioningStatus.DESTROYED: "skipped",
}


@admin.register(Provisioning)
class ProvisioningAdmin(CheckedActions, admin.ModelAdmin):
    list_display = (
        "cluster",
        "provider",
        "region",
        "coloured_status",
        "plan_counts",
        "approved_by",
        "created_at",
    )
    list_filter = ("status", "provider")
    search_fields = ("cluster__name", "region")
    actions = ("approve_plans", "cancel_runs")
    fields = (
        "cluster", "provider", "region", "kubernetes_version", "node_pools", "credential", "auto_approve",
        "coloured_status", "reason", "run", "registration_run", "plan_table", "resource_table", "event_log",
        "outputs", "module", "variables", "secret_variables_status", "backend", "state_name", "approved_by",
        "approved_at", "applied_at", "destroyed_at", "created_by", "created_at", "updated_at",
    )  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False  # started through the API or `manage.py provision`, which validate the whole request

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Provisioning) -> str:
        return status_badge(PROVISIONING_COLOURS.get(obj.status, "running"), obj.get_status_display())

    @admin.display(description="plan")
    def plan_counts(self, obj: Provisioning) -> str:
        s = obj.plan_summary or {}
        return f"+{s.get('add', 0)} ~{s.get('change', 0)} -{s.get('destroy', 0)}" if s else "-"

    @admin.display(description="secret variables")
    def secret_variables_status(self, obj: Provisioning) -> str:
        return describe_stored(obj, "secret_variables")

    @admin.display(description="plan summary")
    def plan_table(self, obj: Provisioning) -> str:
        summary = obj.plan_summary or {}
        if not summary:
            return "no plan yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td></tr>",
            ((r["action"], r["address"]) for r in summary.get("resources", [])),
        )
        return format_html(
            "<p>{} to add, {} to change, {} to destroy</p><table><tr><th>action</th><th>resource</th></tr>{}</table>",
            summary.get("add", 0), summary.get("change", 0), summary.get("destroy", 0), rows,
        )  # fmt: skip

    @admin.display(description="resources (apply)")
    def resource_table(self, obj: Provisioning) -> str:
        step = RunStep.objects.filter(run_id=obj.run_id, name="apply").first()
        resources = (step.output or {}).get("resources", {}) if step else {}
        if not resources:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (addr, r.get("action", ""), r.get("status", ""), r.get("elapsed") or "")
                for addr, r in resources.items()
            ),
        )
        return format_html(
            "<table><tr><th>resource</th><th>action</th><th>status</th><th>elapsed s</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="Terraform and Ansible events (redacted)")
    def event_log(self, obj: Provisioning) -> str:
        run_ids = [r for r in (obj.run_id, obj.registration_run_id) if r]
        events = RunEvent.objects.filter(
            run_id__in=run_ids, data__source__in=["terraform", "ansible"]
        ).order_by("created_at", "id")[:500]
        if not events:
            return "-"
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (f"{e.created_at:%H:%M:%S}", e.data.get("source"), e.step, e.status, e.message)
                    for e in events
                ),
            ),
        )

    @admin.action(description="Approve the plan of selected provisionings", permissions=["approve"])
    def approve_plans(self, request, queryset) -> None:
        for provisioning in queryset.select_related("run"):
            if provisioning.run is None:
                continue
            try:
                services.approve(provisioning.run, request.user)
                self.message_user(request, f"{provisioning.cluster}: plan approved", messages.SUCCESS)
            except services.ProvisioningRefused as exc:
                self.message_user(request, f"{provisioning.cluster}: {exc}", messages.WARNING)

    @admin.action(description="Cancel the provisioning run of selected provisionings", permissions=["cancel"])
    def cancel_runs(self, request, queryset) -> None:
        cancelled = 0
        for provisioning in queryset.select_related("run"):
            if provisioning.run is not None and provisioning.run.is_active:
                cancelled += bool(
                    workflow.request_cancel(provisioning.run, reason=f"cancelled by {request.user}")
                )
        self.message_user(request, f"Cancel requested for {cancelled} run(s).", messages.SUCCESS)

    def has_approve_permission(self, request) -> bool:
        # The same permissions services.approve checks (it also refuses the run's own requester).
        return request.user.has_perms(services.APPROVE_PERMISSIONS)

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("core.cancel_run")
