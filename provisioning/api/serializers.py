"""API serializers of the provisioning app. Credential secrets are write-only: no response contains them."""

from __future__ import annotations

from rest_framework import serializers

from core.fields import describe

from ..choices import CREDENTIAL_SECRET_FIELDS, CloudProvider
from ..models import CloudCredential, Provisioning


class CloudCredentialSerializer(serializers.ModelSerializer):
    """What a credential looks like from outside: everything but the secret, plus how it is stored."""

    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
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


class CloudCredentialCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
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
        names = {
            n for required, optional in CREDENTIAL_SECRET_FIELDS.values() for n in (*required, *optional)
        }
        return {k: v for k, v in self.validated_data.items() if k in names and v}


class TaintSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=253)
    value = serializers.CharField(required=False, allow_blank=True, default="", max_length=63)
    effect = serializers.ChoiceField(choices=["NoSchedule", "PreferNoSchedule", "NoExecute"])


class NodePoolSerializer(serializers.Serializer):
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


class ProvisionSerializer(serializers.Serializer):
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
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    run = serializers.PrimaryKeyRelatedField(read_only=True)
    registration_run = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Provisioning
        fields = (
            "cluster", "provider", "region", "kubernetes_version", "node_pools", "credential", "auto_approve",
            "module", "variables", "backend", "state_name", "status", "reason", "plan_summary", "outputs", "run",
            "registration_run", "approved_by", "approved_at", "applied_at", "destroyed_at", "created_at",
            "updated_at",
        )  # fmt: skip
        read_only_fields = fields
