"""Cloud credentials and the provisioning record of each cluster BudCluster created.

Where the data of a provisioning *run* lives (no extra tables for it):

* the run itself is a ``core.Run`` of the ``cluster.provision`` workflow; each Terraform phase is a
  ``RunStep`` whose ``output`` holds what that phase learned: the plan summary (add/change/destroy and each
  resource's action) on the ``plan`` step, the per-resource progress map (address → action, status,
  elapsed) on the ``apply`` step (updated while it runs), the redacted tail of Terraform's log lines;
* each resource transition (started / complete / errored) and each Ansible task result is a ``RunEvent``
  with structured ``data`` (AWX's job-event idea on the engine's own event log), so the API's run detail,
  the admin and later webhooks read one list.

What must outlive a run sits on :class:`Provisioning`, one per cluster: the requested spec, the module
and state location frozen at request time (a destroy months later must find the same state even if
settings changed), the encrypted saved plan, the approval, the non-sensitive outputs. The kubeconfig
output is not kept here: it goes straight to the cluster through ``clusters.services.replace_kubeconfig``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.fields import EncryptedJSONField, EncryptedTextField

from .choices import CREDENTIAL_SECRET_FIELDS, CloudProvider, ProvisioningStatus, StateBackend


class CloudCredential(models.Model):
    """Credentials of a cloud account, handed to Terraform only as environment variables of its process.

    ``secret`` (encrypted) holds the provider's secret fields (AWS: access_key_id, secret_access_key,
    optional session_token; Azure: client_id, client_secret). It is write-only: no API answer, admin
    page or log shows it.
    """

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=10, choices=CloudProvider.choices)
    secret = EncryptedJSONField(context="provisioning.CloudCredential.secret")
    region = models.CharField(max_length=50, blank=True, help_text="Default region / location")
    tenant_id = models.CharField(max_length=100, blank=True, help_text="Azure tenant (directory) ID")
    subscription_id = models.CharField(max_length=100, blank=True, help_text="Azure subscription ID")
    description = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"

    def missing_fields(self) -> list[str]:
        required, _ = CREDENTIAL_SECRET_FIELDS[self.provider]
        secret = self.secret or {}
        missing = [name for name in required if not secret.get(name)]
        if self.provider == CloudProvider.AZURE:
            missing += [name for name in ("tenant_id", "subscription_id") if not getattr(self, name)]
        return missing

    def environment(self, region: str = "") -> dict[str, str]:
        """The environment Terraform's provider reads the credential from (for the child process only)."""
        secret = self.secret or {}
        if self.provider == CloudProvider.AWS:
            env = {
                "AWS_ACCESS_KEY_ID": secret.get("access_key_id", ""),
                "AWS_SECRET_ACCESS_KEY": secret.get("secret_access_key", ""),
            }
            if secret.get("session_token"):
                env["AWS_SESSION_TOKEN"] = secret["session_token"]
            if region or self.region:
                env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region or self.region
            return env
        return {
            "ARM_CLIENT_ID": secret.get("client_id", ""),
            "ARM_CLIENT_SECRET": secret.get("client_secret", ""),
            "ARM_TENANT_ID": self.tenant_id,
            "ARM_SUBSCRIPTION_ID": self.subscription_id,
        }

    def secret_values(self) -> list[str]:
        return [str(v) for v in (self.secret or {}).values() if v]


class Provisioning(models.Model):
    """How a cluster was (or is being) created with Terraform, and where its state lives."""

    cluster = models.OneToOneField("clusters.Cluster", on_delete=models.CASCADE, related_name="provisioning")
    provider = models.CharField(max_length=10, choices=CloudProvider.choices)
    region = models.CharField(max_length=50)
    kubernetes_version = models.CharField(max_length=20)
    node_pools = models.JSONField(
        default=list, help_text="[{name, role, instance_type, min/max/desired, ...}]"
    )
    credential = models.ForeignKey(CloudCredential, on_delete=models.PROTECT, related_name="provisionings")
    auto_approve = models.BooleanField(default=False)

    module = models.CharField(max_length=500, help_text="Terraform module directory (frozen at request time)")
    variables = models.JSONField(default=dict, help_text="Module variables (non-secret)")
    secret_variables = EncryptedJSONField(
        null=True, blank=True, context="provisioning.Provisioning.secret_variables"
    )
    backend = models.CharField(max_length=10, choices=StateBackend.choices)
    state_name = models.CharField(max_length=500, help_text="pg: schema name; local: state file path")

    status = models.CharField(
        max_length=20, choices=ProvisioningStatus.choices, default=ProvisioningStatus.PENDING, db_index=True
    )
    reason = models.TextField(blank=True)
    plan = EncryptedTextField(
        null=True, blank=True, context="provisioning.Provisioning.plan", help_text="Saved plan (base64)"
    )
    plan_summary = models.JSONField(default=dict, blank=True)
    outputs = models.JSONField(default=dict, blank=True, help_text="Non-sensitive Terraform outputs")
    run = models.ForeignKey(
        "core.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="Latest run"
    )
    registration_run = models.ForeignKey(
        "core.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(
        null=True, blank=True, help_text="First apply started: cloud resources may exist from here on"
    )
    destroyed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.cluster} on {self.provider} {self.region} ({self.status})"

    @property
    def needs_destroy(self) -> bool:
        return self.applied_at is not None and self.destroyed_at is None
