"""API serializers of the provisioning app. Credential secrets are write-only: no response contains them."""

from __future__ import annotations

from rest_framework import serializers

from core.api import serializers as strict
from core.fields import describe

from ..choices import CREDENTIAL_SECRET_FIELDS, CloudProvider
from ..models import CloudCredential, Provisioning


class CloudCredentialSerializer(serializers.ModelSerializer):
    """What a credential looks like from outside: everything but the secret, plus how it is stored."""

    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    secret = serializers.SerializerMethodField(help_text="Never the value: 'encrypted (key id ...)'")

    class Meta:
        model = CloudCredential
        fields = (
            "id", "name", "provider", "region", "tenant_id", "subscription_id", "description", "secret",
            "created_by", "created_at", "updated_at",
        )  # fmt: skip
        read_only_fields = fields

    def get_secret(self, obj: CloudCredential) -> str:
        return describe(getattr(obj, "secret_token", None))


CREDENTIAL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class CloudCredentialCreateSerializer(strict.Serializer):
    name = serializers.RegexField(CREDENTIAL_NAME)
    provider = serializers.ChoiceField(choices=CloudProvider.choices)
    region = serializers.CharField(required=False, allow_blank=True, default="", max_length=50)
    tenant_id = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)
    subscription_id = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    # Secret fields (write-only). AWS: access_key_id, secret_access_key, session_token; Azure: client_id,
    # client_secret.
    access_key_id = serializers.CharField(required=False, write_only=True, max_length=200)
    secret_access_key = serializers.CharField(required=False, write_only=True, max_length=500)
    session_token = serializers.CharField(required=False, write_only=True, max_length=4000)
    client_id = serializers.CharField(required=False, write_only=True, max_length=200)
    client_secret = serializers.CharField(required=False, write_only=True, max_length=500)

    def validated_secret(self) -> dict[str, str]:
        return {k: v for k, v in self.validated_data.items() if k in SECRET_FIELD_NAMES and v}


SECRET_FIELD_NAMES = frozenset(
    name for required, optional in CREDENTIAL_SECRET_FIELDS.values() for name in (*required, *optional)
)


class CloudCredentialUpdateSerializer(strict.Serializer):
    """``PATCH /credentials/{id}``: any of the plain fields and/or secret fields (write-only, never returned).

    Secret fields given replace the stored ones, the others are kept (as in the admin's form); ``null`` removes an
    optional one (``session_token``, e.g. when rotating from temporary to long-lived AWS keys). The result is
    checked as a new credential is (``provisioning.services.check_credential_fields``). The provider cannot
    change: make a new credential."""

    name = serializers.RegexField(CREDENTIAL_NAME, required=False)
    region = serializers.CharField(required=False, allow_blank=True, max_length=50)
    tenant_id = serializers.CharField(required=False, allow_blank=True, max_length=100)
    subscription_id = serializers.CharField(required=False, allow_blank=True, max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=200)
    access_key_id = serializers.CharField(required=False, allow_null=True, write_only=True, max_length=200)
    secret_access_key = serializers.CharField(
        required=False, allow_null=True, write_only=True, max_length=500
    )
    session_token = serializers.CharField(required=False, allow_null=True, write_only=True, max_length=4000)
    client_id = serializers.CharField(required=False, allow_null=True, write_only=True, max_length=200)
    client_secret = serializers.CharField(required=False, allow_null=True, write_only=True, max_length=500)

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError("give the fields to change, or the new secret fields")
        return attrs

    def changes(self) -> dict[str, str]:
        return {k: v for k, v in self.validated_data.items() if k not in SECRET_FIELD_NAMES}

    def secret(self, stored: dict[str, str]) -> dict[str, str] | None:
        """``stored`` with the secret fields given applied (None when none is given: the secret stays)."""
        given = {k: v for k, v in self.validated_data.items() if k in SECRET_FIELD_NAMES}
        if not given:
            return None
        merged = {**stored, **{k: v for k, v in given.items() if v is not None}}
        return {k: v for k, v in merged.items() if given.get(k, v) is not None}


class TaintSerializer(strict.Serializer):
    key = serializers.CharField(max_length=253)
    value = serializers.CharField(required=False, allow_blank=True, default="", max_length=63)
    effect = serializers.ChoiceField(choices=["NoSchedule", "PreferNoSchedule", "NoExecute"])


class NodePoolSerializer(strict.Serializer):
    name = serializers.RegexField(
        r"^[a-z][a-z0-9]{0,11}$",
        error_messages={"invalid": "1-12 lowercase letters or digits, starting with a letter (AKS's rule)"},
    )
    role = serializers.ChoiceField(choices=["system", "gpu"], required=False)
    instance_type = serializers.CharField(max_length=100, help_text="EC2 instance type or Azure VM size")
    min_size = serializers.IntegerField(min_value=0, default=1)
    max_size = serializers.IntegerField(min_value=1, default=1)
    desired_size = serializers.IntegerField(min_value=0, default=1)
    labels = serializers.DictField(child=serializers.CharField(max_length=63), required=False, default=dict)
    taints = TaintSerializer(many=True, required=False, default=list)


class ProvisionSerializer(strict.Serializer):
    provider = serializers.ChoiceField(choices=CloudProvider.choices)
    region = serializers.CharField(max_length=50, help_text="AWS region or Azure location")
    kubernetes_version = serializers.RegexField(r"^\d+\.\d+$", default="1.31")
    node_pools = NodePoolSerializer(
        many=True, help_text="One pool with role 'system' (or named 'system') plus optional GPU pools"
    )
    credential_id = serializers.IntegerField()
    auto_approve = serializers.BooleanField(default=False)


class CreateAndProvisionSerializer(ProvisionSerializer):
    name = serializers.RegexField(
        r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$", help_text="Cluster name (also the cloud name)"
    )


class ProvisioningSerializer(serializers.ModelSerializer):
    cluster = serializers.PrimaryKeyRelatedField(read_only=True)
    credential = serializers.SlugRelatedField(slug_field="name", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    run = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    registration_run = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = Provisioning
        fields = (
            "cluster", "provider", "region", "kubernetes_version", "node_pools", "credential", "auto_approve",
            "module", "variables", "backend", "state_name", "status", "reason", "plan_summary", "outputs", "run",
            "registration_run", "approved_by", "approved_at", "applied_at", "destroyed_at", "created_at",
            "updated_at",
        )  # fmt: skip
        read_only_fields = fields
