"""Cluster serializers. The kubeconfig is write-only everywhere: no response ever contains it."""

from __future__ import annotations

from rest_framework import serializers

from core.api import serializers as strict
from core.api.fields import OutboundURLField

from .. import extensions
from ..choices import ClusterStatus, Platform
from ..models import Cluster, ClusterEvent


class EncryptedKubeconfigSerializer(strict.Serializer):
    """A kubeconfig encrypted to ``GET /crypto/public-key``: RSA-OAEP-SHA256 wrapping an AES-256-GCM key."""

    encrypted_key = serializers.CharField(help_text="base64 RSA-OAEP-SHA256 ciphertext of a 32-byte AES key")
    nonce = serializers.CharField(help_text="base64 12-byte GCM nonce")
    ciphertext = serializers.CharField(help_text="base64 AES-256-GCM ciphertext with its tag appended")


# Labels are the operator's notes on a cluster, shown in lists: bounded so that one request cannot store (and every
# list answer repeat) megabytes.
MAX_LABELS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256


def _labels(value: dict) -> dict:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise serializers.ValidationError("labels must be an object of string keys and string values")
    if len(value) > MAX_LABELS:
        raise serializers.ValidationError(f"at most {MAX_LABELS} labels (got {len(value)})")
    for key, text in value.items():
        if "\x00" in key or "\x00" in text:
            raise serializers.ValidationError("labels may not contain NUL characters")
        if not 1 <= len(key) <= MAX_LABEL_KEY:
            raise serializers.ValidationError(f"label keys are 1 to {MAX_LABEL_KEY} characters")
        if len(text) > MAX_LABEL_VALUE:
            raise serializers.ValidationError(
                f"label {key!r} is {len(text)} characters long; values are at most {MAX_LABEL_VALUE}"
            )
    return value


def _ingress_url(**kwargs) -> OutboundURLField:
    return OutboundURLField(
        required=False,
        allow_blank=True,
        help_text="Base URL of the cluster's ingress (http or https, no user info; metadata, link-local and "
        "loopback addresses are refused)",
        **kwargs,
    )


def _name(**kwargs) -> serializers.RegexField:
    """A cluster name: the same rule on registration and rename. Uniqueness is the service's rule (409
    ``name_taken``), not a serializer's 400."""
    return serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        help_text="Unique name (letters, digits, '.', '_', '-'; up to 100)",
        error_messages={"invalid": "name may hold letters, digits, '.', '_' and '-' (up to 100 characters)"},
        **kwargs,
    )


class ClusterRegisterSerializer(strict.Serializer):
    name = _name()
    kubeconfig = serializers.CharField(
        required=False, write_only=True, trim_whitespace=False, help_text="kubeconfig YAML text"
    )
    kubeconfig_file = serializers.FileField(
        required=False, write_only=True, help_text="kubeconfig file (multipart upload)"
    )
    encrypted_kubeconfig = EncryptedKubeconfigSerializer(required=False, write_only=True)
    context = serializers.CharField(
        required=False, allow_blank=True, max_length=512, help_text="Context to use"
    )
    ingress_url = _ingress_url(default="")
    labels = serializers.JSONField(required=False, default=dict, validators=[_labels])

    def validate(self, attrs: dict) -> dict:
        given = [k for k in ("kubeconfig", "kubeconfig_file", "encrypted_kubeconfig") if attrs.get(k)]
        if len(given) != 1:
            raise serializers.ValidationError(
                "send exactly one of kubeconfig (text), kubeconfig_file (upload) or encrypted_kubeconfig"
            )
        return attrs


class ClusterRegisterFormSerializer(ClusterRegisterSerializer):
    """``POST /clusters/register`` as a form (multipart, to upload ``kubeconfig_file``): the same fields but the
    encrypted envelope, an object that a form cannot carry (send it as JSON)."""

    encrypted_kubeconfig = None

    def validate(self, attrs: dict) -> dict:
        given = [k for k in ("kubeconfig", "kubeconfig_file") if attrs.get(k)]
        if len(given) != 1:
            raise serializers.ValidationError(
                "send exactly one of kubeconfig (text) or kubeconfig_file (upload)"
            )
        return attrs


class ClusterSerializer(serializers.ModelSerializer):
    url = strict.IdentityURLField(view_name="cluster-detail")
    credentials = serializers.SerializerMethodField(
        help_text="How the kubeconfig is stored (never the value)"
    )
    summary = serializers.SerializerMethodField(help_text="Nodes, ready nodes, GPUs by model, free GPUs")
    status = serializers.ChoiceField(choices=ClusterStatus.choices, read_only=True)
    platform = serializers.ChoiceField(choices=Platform.choices, read_only=True)
    labels = serializers.JSONField(required=False, validators=[_labels])
    # An answer, not an input (changes go through ClusterUpdateSerializer): a URL, or empty when none is set.
    ingress_url = serializers.CharField(
        read_only=True, help_text="Base URL of the cluster's ingress, or empty"
    )

    class Meta:
        model = Cluster
        fields = (
            "id", "url", "name", "platform", "server_url", "status", "reason", "ingress_url", "labels",
            "kubernetes_version", "credentials", "summary", "not_available_since", "last_checked",
            "created_at", "updated_at",
        )  # fmt: skip
        read_only_fields = (
            "server_url", "reason", "kubernetes_version", "not_available_since", "last_checked", "created_at",
            "updated_at",
        )  # fmt: skip

    def get_credentials(self, obj: Cluster) -> str:
        from core.fields import describe

        return (
            describe(getattr(obj, "kubeconfig_token", None))
            if hasattr(obj, "kubeconfig_token")
            else "encrypted"
        )

    def get_summary(self, obj: Cluster) -> dict | None:
        summaries = self.context.get("summaries")
        if summaries is None:
            summaries = extensions.summaries([obj.pk])
        return summaries.get(obj.pk)


class ClusterUpdateSerializer(strict.ModelSerializer):
    name = _name(required=False)
    kubeconfig = serializers.CharField(
        required=False,
        write_only=True,
        trim_whitespace=False,
        help_text="Replace the kubeconfig (re-verified)",
    )
    context = serializers.CharField(required=False, write_only=True, allow_blank=True, max_length=512)
    ingress_url = _ingress_url()
    labels = serializers.JSONField(required=False, validators=[_labels])

    class Meta:
        model = Cluster
        fields = ("name", "ingress_url", "labels", "kubeconfig", "context")


class ClusterEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ClusterEvent
        fields = ("kind", "old_status", "new_status", "message", "created_at")


class HealthQuery(strict.Serializer):
    """Query of ``GET /clusters/{id}/health``."""

    checks = serializers.CharField(
        required=False, allow_blank=True, max_length=200,
        help_text="Comma-separated subset of api,nodes,gpu,storage (default: all)",
    )  # fmt: skip


class ClusterDeleteQuery(strict.Serializer):
    """Query of ``DELETE /clusters/{id}``."""

    force = serializers.BooleanField(
        required=False, default=False,
        help_text="Delete even with active deployments or an unreachable cluster (true/false)",
    )  # fmt: skip
