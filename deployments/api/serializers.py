"""Deployment serializers. Credentials (HF token, S3 keys) are write-only: no response ever contains them."""

from __future__ import annotations

import math

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from clusters.models import Revision
from core.api import serializers as strict
from core.api.fields import OutboundURLField
from core.api.responses import RunAcceptedSerializer

from ..autoscaling import MAX_REPLICAS, Metric, public_state
from ..catalog import resolve_model
from ..choices import DeploymentStatus, DeviceType, ModelSource
from ..models import Deployment, DeploymentEvent, Worker
from .filters import cluster_by_reference

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Bounds of what a request may carry: each is far above real use (vLLM takes a handful of variables and flags) and
# keeps one request from storing, rendering into manifests and echoing back megabytes.
MAX_ENV = 100
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 16 * 1024
MAX_ENGINE_ARGS = 100
MAX_MODEL_FIELDS = 64


@extend_schema_field(
    {"oneOf": [{"type": "integer"}, {"type": "string"}], "description": "Cluster id or name"}
)
class ClusterField(serializers.Field):
    """A cluster by id or by name."""

    def to_internal_value(self, data):
        # The same lookup as the lists' ``cluster`` filter (only strings that could be a name reach the database).
        cluster = None
        if (isinstance(data, int) and not isinstance(data, bool)) or isinstance(data, str):
            cluster = cluster_by_reference(str(data))
        if cluster is None:
            raise serializers.ValidationError(f"no cluster {data!r} (give its id or name)")
        return cluster

    def to_representation(self, value):
        return value.pk


class ModelField(serializers.JSONField):
    """A catalog name or Hugging Face id, or an object describing the model (see deployments/catalog.py)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not isinstance(value, str | dict):
            raise serializers.ValidationError("model must be a catalog name or an object")
        if isinstance(value, str) and len(value) > 200:
            raise serializers.ValidationError("model name is longer than 200 characters")
        if isinstance(value, dict) and len(value) > MAX_MODEL_FIELDS:
            raise serializers.ValidationError(f"model object has more than {MAX_MODEL_FIELDS} fields")
        try:
            resolve_model(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value


class S3Serializer(strict.Serializer):
    endpoint = OutboundURLField(
        required=False, allow_blank=True, default="",
        help_text="S3-compatible endpoint (http or https, no user info; metadata and link-local addresses refused)",
    )  # fmt: skip
    region = serializers.CharField(required=False, default="us-east-1", max_length=64)
    bucket = serializers.CharField(max_length=255)
    prefix = serializers.CharField(required=False, allow_blank=True, default="", max_length=1024)
    access_key_id = serializers.CharField(write_only=True, max_length=256)
    secret_access_key = serializers.CharField(write_only=True, max_length=1024)


class PlanSerializer(strict.Serializer):
    """What to deploy and where: the body of ``POST /deployments/plan``, which takes every field of a deploy request
    (``name`` optional), so that a deploy body can be planned as it is. Credentials are never kept from a plan:
    only whether an HF token is given matters (the manifests then read it from its Secret). Without ``cluster``
    every available cluster is planned on (the fleet plan)."""

    cluster = ClusterField(
        required=False,
        help_text="Cluster id or name; omitted: every available cluster is planned on and the best one is taken",
    )
    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        required=False,
        help_text="Deployment (endpoint) name; letters, digits, '.', '_', '-'",
    )
    model = ModelField(
        help_text="Catalog name (e.g. llama-3.1-8b-instruct) or an object with the model's shape"
    )
    served_model_name = serializers.CharField(required=False, max_length=200)
    device_type = serializers.ChoiceField(choices=DeviceType.choices, default=DeviceType.AUTO)
    replicas = serializers.IntegerField(min_value=1, max_value=256, default=1)
    dtype = serializers.CharField(required=False, default="auto", max_length=32)
    quantization = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, default=None, max_length=64
    )
    context_len = serializers.IntegerField(required=False, min_value=1)
    input_tokens = serializers.IntegerField(required=False, min_value=1)
    output_tokens = serializers.IntegerField(required=False, min_value=1)
    concurrency = serializers.IntegerField(min_value=1, default=16)
    gpu_memory_utilization = serializers.FloatField(required=False, min_value=0.05, max_value=1.0)
    max_tp = serializers.IntegerField(required=False, min_value=1)
    engine_args = serializers.ListField(
        child=serializers.CharField(max_length=500), required=False, default=list, max_length=MAX_ENGINE_ARGS
    )
    image = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=MAX_ENV_VALUE), required=False, default=dict,
        help_text=f"Plain environment variables for the engine (names that look like secrets are refused; at "
        f"most {MAX_ENV} variables, values up to {MAX_ENV_VALUE} characters)",
    )  # fmt: skip
    source = serializers.ChoiceField(choices=ModelSource.choices, default=ModelSource.HF)
    revision = serializers.CharField(required=False, default="main", max_length=256)
    service_type = serializers.ChoiceField(choices=["LoadBalancer", "ClusterIP", "NodePort"], required=False)
    hf_token = serializers.CharField(
        required=False, write_only=True, allow_blank=True, max_length=1024,
        help_text="Hugging Face token for gated models; stored as a Kubernetes Secret, never returned",
    )  # fmt: skip
    s3 = S3Serializer(required=False, help_text="With source s3: where the weights are and the access keys")
    ready_timeout = serializers.FloatField(
        required=False, min_value=1, help_text="Seconds to wait for pods ready"
    )
    transfer_timeout = serializers.FloatField(required=False, min_value=1)
    benchmark = serializers.JSONField(required=False, allow_null=True, default=None)
    keep_on_failure = serializers.BooleanField(default=False, help_text="Leave the namespace for inspection")

    def validate_benchmark(self, value: dict | None) -> dict | None:
        """The same options as ``POST /deployments/{id}/benchmark``, checked before anything is created."""
        if not value:
            return None
        from ..benchmarking import clean_options

        return clean_options(value)

    def credentials(self) -> dict:
        data = self.validated_data
        creds = {}
        if data.get("hf_token"):
            creds["hf_token"] = data["hf_token"]
        if data.get("s3"):
            creds["s3_access_key_id"] = data["s3"]["access_key_id"]
            creds["s3_secret_access_key"] = data["s3"]["secret_access_key"]
        return creds

    def validate_env(self, value: dict) -> dict:
        import re

        if len(value) > MAX_ENV:
            raise serializers.ValidationError(f"at most {MAX_ENV} environment variables (got {len(value)})")
        for key in value:
            if len(key) > MAX_ENV_NAME:
                raise serializers.ValidationError(
                    f"environment variable names are at most {MAX_ENV_NAME} characters (got {len(key)})"
                )
            if not re.match(_ENV_NAME, key):
                raise serializers.ValidationError(f"{key!r} is not a valid environment variable name")
        return value

    def config(self) -> dict:
        """The request as stored on the deployment and given to placement (no credentials)."""
        data = dict(self.validated_data)
        data.pop("cluster", None)
        data.pop("name", None)
        s3 = data.pop("s3", None)
        for key in ("hf_token", "keep_on_failure", "benchmark_request"):
            data.pop(key, None)
        if s3:
            data["s3"] = {k: v for k, v in s3.items() if k not in ("access_key_id", "secret_access_key")}
        return {k: v for k, v in data.items() if v is not None}


class DeploySerializer(PlanSerializer):
    """The body of ``POST /deployments/deploy``: a plan's body with a name, and the S3 block when the source is S3."""

    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", help_text="Deployment (endpoint) name, unique on its cluster"
    )

    def validate(self, attrs: dict) -> dict:
        if attrs.get("source") == ModelSource.S3 and not attrs.get("s3"):
            raise serializers.ValidationError({"s3": "required when source is s3"})
        return attrs


class DeployAcceptedSerializer(RunAcceptedSerializer):
    """The 202 answer of ``POST /deployments/deploy``."""

    deployment_id = serializers.IntegerField()
    namespace = serializers.CharField()
    cluster = serializers.IntegerField(
        required=False, help_text="The cluster chosen by the fleet plan (only when the request named none)"
    )
    cluster_name = serializers.CharField(
        required=False, help_text="Its name (only when the request named no cluster)"
    )


class WorkerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Worker
        fields = (
            "id",
            "name",
            "node",
            "device",
            "phase",
            "ready",
            "restarts",
            "reason",
            "started_at",
            "updated_at",
        )


class RevisionSerializer(serializers.ModelSerializer):
    objects = serializers.JSONField(source="applied", read_only=True)

    class Meta:
        model = Revision
        fields = ("number", "description", "values", "objects", "created_at")


class DeploymentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentEvent
        fields = ("kind", "old_status", "new_status", "message", "data", "created_at")


class AutoscalingPolicySerializer(strict.Serializer):
    """An autoscaling policy (``deployments/autoscaling.py``): replica range, one metric with its target, and the
    HPA-style windows. Every bound is checked here, so a stored policy is always one the beat can evaluate."""

    min_replicas = serializers.IntegerField(min_value=1, max_value=MAX_REPLICAS)
    max_replicas = serializers.IntegerField(min_value=1, max_value=MAX_REPLICAS)
    metric = serializers.ChoiceField(
        choices=Metric.choices,
        help_text="waiting_requests: vllm:num_requests_waiting per replica; ttft_p95: p95 of "
        "vllm:time_to_first_token_seconds since the previous evaluation, in ms; kv_cache_usage: "
        "vllm:kv_cache_usage_perc (or gpu_cache_usage_perc), a fraction 0-1",
    )
    target = serializers.FloatField(
        help_text="Per replica, in the metric's unit: waiting requests (> 0), milliseconds (> 0, ≤ 600000), or a "
        "KV-cache fraction (> 0, ≤ 1)"
    )
    tolerance = serializers.FloatField(
        required=False, default=0.1, min_value=0.0, max_value=0.9,
        help_text="No change while value/target is within this of 1 (the HPA's 10 % by default)",
    )  # fmt: skip
    scale_up_stabilization_seconds = serializers.FloatField(
        required=False, default=0.0, min_value=0.0, max_value=3600.0,
        help_text="Scale up to the lowest recommendation of this window (0: at once)",
    )  # fmt: skip
    scale_down_stabilization_seconds = serializers.FloatField(
        required=False, default=300.0, min_value=0.0, max_value=3600.0,
        help_text="Scale down to the highest recommendation of this window (load that returns within it keeps "
        "the replicas)",
    )  # fmt: skip
    scale_up_cooldown_seconds = serializers.FloatField(
        required=False, default=60.0, min_value=0.0, max_value=86400.0,
        help_text="No scale-up until this long after the previous scale ended",
    )  # fmt: skip
    scale_down_cooldown_seconds = serializers.FloatField(
        required=False, default=300.0, min_value=0.0, max_value=86400.0,
        help_text="No scale-down until this long after the previous scale ended",
    )  # fmt: skip

    TARGET_BOUNDS = {
        Metric.WAITING_REQUESTS: (0.0, 100000.0, "waiting requests per replica"),
        Metric.TTFT_P95: (0.0, 600000.0, "milliseconds"),
        Metric.KV_CACHE_USAGE: (0.0, 1.0, "a fraction of the KV cache"),
    }

    def validate(self, attrs: dict) -> dict:
        if self.partial:  # a PATCH's fields alone; the view checks the merged policy whole afterwards
            return attrs
        errors = {}
        if attrs["min_replicas"] > attrs["max_replicas"]:
            errors["max_replicas"] = (
                f"must be at least min_replicas ({attrs['min_replicas']}), got {attrs['max_replicas']}"
            )
        low, high, unit = self.TARGET_BOUNDS[attrs["metric"]]
        target = attrs["target"]
        if not math.isfinite(target) or not low < target <= high:
            errors["target"] = (
                f"for {attrs['metric']} the target is {unit}: above {low:g} and at most {high:g}"
            )
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


AUTOSCALING_SCHEMA = {
    "type": "object",
    "nullable": True,
    "description": "null without a policy; else the policy, the KServe-style ScalingReady condition "
    "(status True/False/Unknown, reason, message, last_transition_time), the desired replicas, the last "
    "evaluation (metric value, target, per-replica values, recommendation, decision) and the last scale",
    "properties": {
        "policy": {"type": "object", "nullable": True},
        "conditions": {"type": "array", "items": {"type": "object"}},
        "desired_replicas": {"type": "integer", "nullable": True},
        "last_evaluation": {"type": "object", "nullable": True},
        "last_scale": {"type": "object", "nullable": True},
    },
}


@extend_schema_field(AUTOSCALING_SCHEMA)
class AutoscalingStateField(serializers.Field):
    """The deployment's autoscaling policy and state, read-only (``autoscaling.public_state``)."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, value: Deployment):
        return public_state(value)


class DeploymentSerializer(serializers.ModelSerializer):
    url = strict.IdentityURLField(view_name="deployment-detail")
    cluster_name = serializers.CharField(source="cluster.name", read_only=True)
    status = serializers.ChoiceField(choices=DeploymentStatus.choices, read_only=True)
    revision = serializers.SerializerMethodField(help_text="Current revision number of the runtime release")
    autoscaling = AutoscalingStateField()

    class Meta:
        model = Deployment
        fields = (
            "id", "url", "name", "cluster", "cluster_name", "namespace", "model_name", "device_type", "engine",
            "replicas", "ready_replicas", "engine_args", "image", "endpoint_url", "status", "reason", "revision",
            "autoscaling", "last_checked", "created_at", "updated_at",
        )  # fmt: skip
        read_only_fields = fields

    def get_revision(self, obj: Deployment) -> int | None:
        return obj.release.current_revision if obj.release_id else None


class DeploymentDetailSerializer(DeploymentSerializer):
    workers = WorkerSerializer(many=True, read_only=True)
    revisions = serializers.SerializerMethodField()
    run = serializers.SerializerMethodField(help_text="The latest run of this deployment")
    events = serializers.SerializerMethodField()

    class Meta(DeploymentSerializer.Meta):
        fields = (
            *DeploymentSerializer.Meta.fields, "model_spec", "config", "placement", "keep_on_failure", "workers",
            "revisions", "run", "events",
        )  # fmt: skip
        read_only_fields = fields

    def get_revisions(self, obj: Deployment) -> list[dict]:
        from ..services import revisions

        return RevisionSerializer(revisions(obj), many=True).data

    def get_run(self, obj: Deployment) -> dict | None:
        from rest_framework.reverse import reverse

        from core.models import Run

        run = (
            Run.objects.filter(subject_id=str(obj.pk), kind__startswith="deployment.")
            .order_by("-created_at")
            .first()
        )
        if run is None:
            return None
        request = self.context.get("request")
        return {
            "id": str(run.pk), "kind": run.kind, "status": run.status, "progress": run.progress, "eta": run.eta,
            "error": run.error, "url": reverse("run-detail", kwargs={"pk": run.pk}, request=request),
        }  # fmt: skip

    def get_events(self, obj: Deployment) -> list[dict]:
        return DeploymentEventSerializer(obj.events.all()[:50], many=True).data


class DeploymentUpdateSerializer(strict.Serializer):
    replicas = serializers.IntegerField(required=False, min_value=1, max_value=256)
    engine_args = serializers.ListField(
        child=serializers.CharField(max_length=500), required=False, max_length=MAX_ENGINE_ARGS
    )
    image = serializers.CharField(required=False, allow_blank=True, max_length=300)

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError("give replicas, engine_args and/or image")
        return attrs


class RollbackSerializer(strict.Serializer):
    revision = serializers.IntegerField(min_value=1)


class WorkerLogsQuery(strict.Serializer):
    """Query of ``GET /deployments/{id}/workers/{worker_id}/logs``."""

    tail = serializers.IntegerField(
        required=False,
        default=200,
        min_value=1,
        max_value=5000,
        help_text="Last N lines (default 200, max 5000)",
    )
