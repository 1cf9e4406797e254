"""Admin of the provisioning app: credentials with write-only secrets, provisioning runs with their plan,
per-resource progress and the (redacted) Terraform and Ansible event logs, approve/cancel actions (approval goes
through ``services.approve``, as the API's and ``manage.py approve_run``'s: its permissions, no self-approval).

Credentials: created through ``services.create_credential`` (the API's service) after the API's own checks (the
``CloudCredentialCreateSerializer`` for names and lengths, ``services.check_credential_fields`` for the provider's
fields); rotated through ``services.update_credential`` (``PATCH /credentials/{id}``'s service). Secret inputs
are write-only: a blank one keeps the stored value, a value replaces it, an optional one can be cleared; a stored
secret is never rendered, the page only says how it is stored and which fields are set.

A provisioning record is never deleted here: it is what lets the cluster's deletion run ``terraform destroy``.
The cloud resources go with the cluster's deletion, whose confirmation page names them (``describe_deletion``).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from clusters.admin import describe_deletion
from clusters.models import Cluster
from core import workflow
from core.admin import CheckedActions, status_badge
from core.fields import describe_stored
from core.models import RunEvent, RunStep

from . import services
from .api.serializers import CloudCredentialCreateSerializer
from .choices import CREDENTIAL_SECRET_FIELDS, CloudProvider, ProvisioningStatus
from .models import CloudCredential, Provisioning

# The secret inputs, in the providers' order (AWS: access_key_id, secret_access_key, session_token; Azure: ...).
_SECRET_NAMES = list(dict.fromkeys(n for req, opt in CREDENTIAL_SECRET_FIELDS.values() for n in (*req, *opt)))


def _secret_input() -> forms.CharField:
    return forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )


class CloudCredentialForm(forms.ModelForm):
    """Secret fields are write-only: empty inputs keep the stored values; nothing is ever rendered back."""

    access_key_id = _secret_input()
    secret_access_key = _secret_input()
    session_token = _secret_input()
    clear_session_token = forms.BooleanField(
        required=False, help_text="Remove the stored session token (e.g. when rotating to long-lived keys)."
    )
    client_id = _secret_input()
    client_secret = _secret_input()

    class Meta:
        model = CloudCredential
        fields = ("name", "provider", "region", "tenant_id", "subscription_id", "description")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        stored = self._stored()
        for name in _SECRET_NAMES:
            if name not in self.fields:
                continue
            if not self.instance.pk:
                help_text = "Write-only: never shown again once saved."
            elif name in stored:
                help_text = "Stored (never shown): leave empty to keep it, or enter a new value."
            else:
                help_text = "Not stored."
            self.fields[name].help_text = help_text

    def _stored(self) -> dict:
        return dict(self.instance.secret or {}) if self.instance.pk else {}

    def _provider(self) -> str:
        # On an existing credential the provider is read-only (its provisionings depend on it).
        return self.cleaned_data.get("provider") or self.instance.provider

    def clean(self):
        data = super().clean()
        provider = self._provider()
        if not provider:
            return data
        # The API's checks of names and lengths (its create serializer; blank secret inputs mean "keep"), then its
        # rule for the provider's fields on the secret as it will be stored.
        given = {
            k: v
            for k, v in data.items()
            if isinstance(v, str) and k != "provider" and (v or k not in _SECRET_NAMES)
        }
        body = CloudCredentialCreateSerializer(data={**given, "provider": provider})
        if not body.is_valid():
            for name, errors in body.errors.items():
                if name in self.errors:
                    continue  # the form said it already
                for error in errors if isinstance(errors, list) else [errors]:
                    self.add_error(name if name in self.fields else None, str(error))
        self.secret = self._merged_secret(data)
        try:
            services.check_credential_fields(
                provider,
                self.secret,
                tenant_id=data.get("tenant_id", ""),
                subscription_id=data.get("subscription_id", ""),
            )
        except services.ProvisioningRefused as exc:
            fields = [f for f in exc.data.get("fields", []) if f in self.fields and f not in self.errors]
            for name in fields:
                self.add_error(name, str(exc))
            if not fields:
                self.add_error(None, str(exc))
        return data

    def _merged_secret(self, data: dict) -> dict[str, str]:
        """The stored secret with the inputs applied: a value replaces, blank keeps, "clear" removes. A value typed
        into another provider's input is kept, so that the field rule refuses it by name."""
        secret = self._stored()
        if data.get("clear_session_token"):
            secret.pop("session_token", None)
        secret.update({name: data[name] for name in _SECRET_NAMES if data.get(name)})
        return secret

    def save(self, commit: bool = True):
        # The admin saves through the services (CloudCredentialAdmin.save_model); this keeps the form usable alone.
        credential = super().save(commit=False)
        credential.secret = self.secret
        if commit:
            credential.save()
        return credential


@admin.register(CloudCredential)
class CloudCredentialAdmin(admin.ModelAdmin):
    form = CloudCredentialForm
    list_display = ("name", "provider", "region", "secret_status", "created_by", "created_at")
    list_filter = ("provider",)
    search_fields = ("name",)

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ("name", "provider", "region", "description")}),
            (
                "AWS",
                {"fields": ("access_key_id", "secret_access_key", "session_token", "clear_session_token")},
            ),
            ("Azure", {"fields": ("tenant_id", "subscription_id", "client_id", "client_secret")}),
        ]
        if obj is not None:
            fieldsets.append(
                ("Stored", {"fields": ("secret_status", "created_by", "created_at", "updated_at")})
            )
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # The provider stays: provisionings use the credential for their provider (and its destroy).
        return ("provider", "secret_status", "created_by", "created_at", "updated_at")

    @admin.display(description="secret")
    def secret_status(self, obj: CloudCredential) -> str:
        return describe_stored(obj, "secret")

    def save_model(self, request, obj, form, change) -> None:
        if change:
            # Rotation is PATCH /credentials/{id}'s service, given the whole secret as the form merged it.
            changes = {
                f: form.cleaned_data[f] for f in services.CREDENTIAL_CHANGEABLE if f in form.cleaned_data
            }
            services.update_credential(obj, secret=form.secret, **changes)
            return
        # A new credential is made by the API's service; the admin goes on (log entry, redirect) with that row.
        created = services.create_credential(
            name=obj.name, provider=obj.provider, secret=form.secret, region=obj.region, tenant_id=obj.tenant_id,
            subscription_id=obj.subscription_id, description=obj.description, user=request.user,
        )  # fmt: skip
        obj.pk, obj.created_by, obj.created_at, obj.updated_at = (
            created.pk, created.created_by, created.created_at, created.updated_at,
        )  # fmt: skip
        obj._state.adding = False

    def delete_model(self, request, obj) -> None:
        try:
            services.delete_credential(obj)
        except services.ProvisioningRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_queryset(self, request, queryset) -> None:
        for credential in queryset:
            self.delete_model(request, credential)


@describe_deletion
def _cloud_resources(cluster: Cluster) -> list[str]:
    provisioning = Provisioning.objects.filter(cluster=cluster).first()
    if provisioning is None or provisioning.status == ProvisioningStatus.DESTROYED:
        return []
    cloud = CloudProvider(provisioning.provider).label
    lines = []
    if provisioning.run_id and provisioning.run.is_active:
        lines.append("its provisioning run, still going: stopped first")
    if provisioning.needs_destroy:
        lines.append(
            f"the {cloud} cluster in {provisioning.region} and every cloud resource Terraform created for it "
            "(terraform destroy), then its Terraform state"
        )
    return lines


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

    def has_delete_permission(self, request, obj=None) -> bool:
        # The record holds the state location and module the cluster's deletion needs to destroy the cloud
        # resources: dropping it would leave them running and billed. Delete the cluster instead.
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
