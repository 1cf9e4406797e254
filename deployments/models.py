"""Deployments of models on clusters, their workers (one per pod) and their status changes.

A deployment's revisions are the ``clusters.Revision`` rows of its runtime release (``Deployment.release``):
the release machinery already stores values, rendered manifest and applied objects per revision and
implements rollback as "re-apply a stored revision as a new one", so a second revision table would only
duplicate it and drift from what is on the cluster.
"""

from __future__ import annotations

from django.conf import settings
from django.conf import settings as django_settings
from django.db import models
from django.utils import timezone

from core.fields import EncryptedJSONField
from core.models import StatusEvent

from .choices import BenchmarkStatus, DeploymentStatus, DeviceType, Engine, ModelSource, WorkerPhase

NAMESPACE_MAX_NAME = 50


class Deployment(models.Model):
    name = models.CharField(max_length=100)
    cluster = models.ForeignKey("clusters.Cluster", on_delete=models.CASCADE, related_name="deployments")
    namespace = models.CharField(max_length=63, help_text="bud-<sanitised name>-<8 hex>, one per deployment")
    model_name = models.CharField(max_length=200, help_text="Catalog name or the name given in the request")
    model_spec = models.JSONField(default=dict, help_text="The model's shape as placement saw it")
    device_type = models.CharField(
        max_length=10,
        choices=DeviceType.choices,
        default=DeviceType.AUTO,
        help_text="As requested; the chosen device is in placement",
    )
    engine = models.CharField(max_length=20, choices=Engine.choices, default=Engine.VLLM)
    replicas = models.PositiveIntegerField(default=1)
    engine_args = models.JSONField(
        default=list, blank=True, help_text="Extra engine flags, e.g. --enable-prefix-caching"
    )
    image = models.CharField(
        max_length=300, blank=True, help_text="repository:tag override of the runtime image"
    )
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text="dtype, quantization, context, concurrency, source, service type, timeouts (no secrets)",
    )
    placement = models.JSONField(default=dict, blank=True, help_text="Chosen candidate and memory estimate")
    endpoint_url = models.CharField(max_length=500, blank=True)
    status = models.CharField(
        max_length=20, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING, db_index=True
    )
    reason = models.TextField(blank=True)
    ready_replicas = models.PositiveIntegerField(default=0)
    release = models.ForeignKey(
        "clusters.Release", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Hugging Face token / S3 keys from the request, until the deploy run has put them into Kubernetes Secrets.
    # The context string is bound into the ciphertext and must never change.
    credentials = EncryptedJSONField(null=True, blank=True, context="deployments.Deployment.credentials")
    keep_on_failure = models.BooleanField(default=False)
    # Autoscaling (deployments/autoscaling.py): the policy as validated by the API, and what the beat last
    # decided. JSON, not columns: the state is one document read and compare-and-set whole by the evaluation.
    autoscaling = models.JSONField(
        default=dict,
        blank=True,
        help_text="Autoscaling policy (min/max replicas, metric, target, windows); empty: off",
    )
    autoscaling_state = models.JSONField(
        default=dict,
        blank=True,
        help_text="ScalingReady condition, last evaluation and last scale (written by the autoscaling beat)",
    )
    last_checked = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(fields=["cluster", "namespace"], name="deployment_unique_namespace"),
            # People and commands name deployments (``manage.py benchmark llama-8b``), so a name means one live
            # deployment per cluster. Deleted ones stay as history and free their name for a new deployment.
            models.UniqueConstraint(
                fields=["cluster", "name"],
                condition=~models.Q(status="deleted"),
                name="deployment_unique_live_name",
                violation_error_message="A live deployment with this name exists on this cluster.",
            ),
        ]
        permissions = [("rollback_deployment", "Can roll a deployment back to a revision")]

    def __str__(self) -> str:
        return f"{self.name} ({self.namespace})"

    @property
    def served_model_name(self) -> str:
        return self.config.get("served_model_name") or self.model_name

    def autoscaling_summary(self) -> str:
        """The policy and the ScalingReady condition in words (the admin's read-only field)."""
        if not self.autoscaling:
            return "off (replicas are set by hand)"
        policy, state = self.autoscaling, self.autoscaling_state or {}
        lines = [
            f"policy: {policy.get('min_replicas')}-{policy.get('max_replicas')} replicas, {policy.get('metric')} "
            f"target {policy.get('target')}"
        ]
        condition = state.get("condition") or {}
        if condition:
            lines.append(
                f"{condition.get('type')}: {condition.get('status')} ({condition.get('reason')}) "
                f"{condition.get('message', '')}".rstrip()
            )
        evaluation = state.get("last_evaluation") or {}
        if evaluation.get("value") is not None:
            lines.append(
                f"last evaluation {evaluation.get('time', '')}: {evaluation.get('metric')} {evaluation.get('value')} "
                f"→ recommends {evaluation.get('recommendation')}, {evaluation.get('decision')}"
            )
        last = state.get("last_scale") or {}
        if last:
            lines.append(f"last scale {last.get('time', '')}: {last.get('from')} → {last.get('to')}")
        return "\n".join(lines)

    autoscaling_summary.short_description = "autoscaling"  # type: ignore[attr-defined]


class Worker(models.Model):
    """One runtime pod of a deployment, as last seen (upserted in bulk by the deploy run and the health beat)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="workers")
    name = models.CharField(max_length=253)
    node = models.CharField(max_length=253, blank=True)
    device = models.CharField(max_length=200, blank=True, help_text="e.g. 1x nvidia.com/gpu NVIDIA-H100")
    phase = models.CharField(max_length=20, choices=WorkerPhase.choices, default=WorkerPhase.PENDING)
    ready = models.BooleanField(default=False)
    restarts = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=500, blank=True, help_text="Waiting reason, e.g. CrashLoopBackOff")
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("deployment", "name")
        constraints = [models.UniqueConstraint(fields=["deployment", "name"], name="worker_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.phase})"


class DeploymentEvent(StatusEvent):
    """Append-only log of a deployment's status changes (deploy runs, health transitions, day-2 runs)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    data = models.JSONField(
        default=dict,
        blank=True,
        help_text="Figures behind the event, e.g. the metric values of an autoscaling decision",
    )

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.kind}: {self.message}"


class Benchmark(models.Model):
    """One load test of a deployment's endpoint (``deployments/benchmarking.py``), as vLLM's serving benchmark.

    One row per benchmark, no separate result table: the full figures (``summary``: every percentile, the
    errors with counts, target verdicts) are one JSON document read whole, and the few numbers people sort and
    filter by (mean/p95 TTFT, mean ITL, throughput, failures, pass/fail) are copied into columns when the
    benchmark ends.  ``samples`` (per request, compact) can be large, so lists defer it.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="benchmarks")
    status = models.CharField(
        max_length=20, choices=BenchmarkStatus.choices, default=BenchmarkStatus.PENDING, db_index=True
    )
    partial = models.BooleanField(
        default=False, help_text="Cancelled or cut short: figures cover what finished"
    )
    options = models.JSONField(default=dict, blank=True, help_text="The request as given (validated)")
    settings = models.JSONField(
        default=dict, blank=True, help_text="Load generator settings (header names only, never their values)"
    )
    targets = models.JSONField(default=dict, blank=True, help_text="ttft_ms, e2e_ms, throughput_per_user")
    margin = models.FloatField(default=0.5, help_text="Allowed relative slack on the targets")
    slo = models.JSONField(
        default=dict, blank=True, help_text="Per-request targets: ttft_ms, tpot_ms, e2e_ms (ms), min_share"
    )
    run = models.ForeignKey("core.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    summary = models.JSONField(default=dict, blank=True, help_text="benchstats.summarize() of the main run")
    sweep = models.JSONField(
        default=list, blank=True, help_text="One summary per concurrency when a sweep ran (else empty)"
    )
    samples = models.JSONField(default=dict, blank=True, help_text="Per-request samples (encode_samples)")
    error = models.TextField(blank=True)
    # Key figures as columns (copied from summary) so lists sort and filter without reading JSON.
    successful_requests = models.PositiveIntegerField(null=True, blank=True)
    failed_requests = models.PositiveIntegerField(null=True, blank=True)
    mean_ttft_ms = models.FloatField(null=True, blank=True)
    p95_ttft_ms = models.FloatField(null=True, blank=True)
    mean_itl_ms = models.FloatField(null=True, blank=True)
    output_throughput = models.FloatField(null=True, blank=True, help_text="Output tokens/s")
    passed = models.BooleanField(null=True, blank=True)
    goodput = models.FloatField(null=True, blank=True, help_text="Requests/s that met every SLO target")
    slo_attainment = models.FloatField(
        null=True, blank=True, help_text="Share of requests that met every SLO target (0-1)"
    )
    capacity_rps = models.FloatField(
        null=True,
        blank=True,
        help_text="Capacity at SLO: highest offered rate (req/s) that met it (rate sweeps)",
    )
    valid = models.BooleanField(
        null=True, blank=True, help_text="False when the client was the bottleneck (invalid_reason says how)"
    )
    invalid_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    KEY_FIGURES = (
        "successful_requests",
        "failed_requests",
        "mean_ttft_ms",
        "p95_ttft_ms",
        "mean_itl_ms",
        "output_throughput",
        "passed",
        "goodput",
        "slo_attainment",
        "valid",
    )

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"Benchmark {self.pk} of {self.deployment_id} ({self.status})"


__all__ = ["NAMESPACE_MAX_NAME", "Benchmark", "Deployment", "DeploymentEvent", "ModelSource", "Worker"]
