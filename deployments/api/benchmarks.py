"""Benchmark endpoints: start one on a running deployment, list and read them, and their plots as PNG or SVG.

``POST /deployments/{id}/benchmark`` → 202 + the ``deployment.benchmark`` run (progress: requests done / total;
cancel through ``POST /runs/{id}/cancel`` keeps what finished, marked partial).  ``GET /benchmarks`` (filter by
deployment, status, partial, passed), ``GET /benchmarks/{id}`` (settings, the summary with every percentile,
pass/fail against the targets with the margin used, errors with counts, the sweep) and
``GET /benchmarks/{id}/plots/<kind>.<png|svg>``.  Serving to an SLO: the list carries ``goodput``,
``slo_attainment``, ``capacity_rps`` and ``valid`` (filter ``valid=false`` finds client-bound runs); the detail adds
``slo_verdict`` (targets, goodput, attainment, share meeting each target), ``client`` (send lag, event-loop delay,
CPU per load process, and why the run is invalid), ``confidence`` (repetitions) and ``capacity`` (rate sweeps).
"""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from core.api.errors import error_response
from core.api.idempotency import IDEMPOTENCY_KEY, start_once
from core.api.query import KnownQueryParameters
from core.api.responses import RUN_ACCEPTED, error_answer, refusal
from core.permissions import ModelPermissions

from .. import benchmarking, plots
from ..choices import BenchmarkStatus
from ..models import Benchmark, Deployment


@extend_schema_field({"type": "string", "description": " | ".join(BenchmarkStatus.values)})
class _StatusField(serializers.CharField):
    """Benchmark status, described in the schema by its values: an enum named after the field would collide
    with the other "status" enums unless the project's ENUM_NAME_OVERRIDES lists BenchmarkStatus."""


class BenchmarkSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="benchmark-detail")
    status = _StatusField(read_only=True)
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    run_url = serializers.SerializerMethodField()

    class Meta:
        model = Benchmark
        fields = (
            "id", "url", "deployment", "deployment_name", "status", "partial", "run", "run_url",
            "successful_requests", "failed_requests", "mean_ttft_ms", "p95_ttft_ms", "mean_itl_ms",
            "output_throughput", "passed", "goodput", "slo_attainment", "capacity_rps", "valid", "error",
            "created_at", "started_at", "finished_at",
        )  # fmt: skip
        read_only_fields = fields

    def get_run_url(self, obj: Benchmark) -> str | None:
        if obj.run_id is None:
            return None
        return reverse("run-detail", kwargs={"pk": obj.run_id}, request=self.context.get("request"))


class BenchmarkDetailSerializer(BenchmarkSerializer):
    verdict = serializers.SerializerMethodField(help_text="passed, the margin used and each target's check")
    errors = serializers.SerializerMethodField(help_text="Failed requests by message, most frequent first")
    plots = serializers.SerializerMethodField(help_text="PNG plot URLs (replace .png by .svg for SVG)")
    slo_verdict = serializers.SerializerMethodField(
        help_text="Targets, goodput (req/s meeting all), attainment, share meeting each target; null without slo"
    )
    client = serializers.SerializerMethodField(
        help_text="The client's own health: send lag, event-loop delay, CPU per load process, invalid reasons"
    )
    confidence = serializers.SerializerMethodField(
        help_text="Student-t intervals over repetitions (mean, low, high, level, n) per figure; null for one run"
    )
    capacity = serializers.SerializerMethodField(
        help_text="Rate sweeps with an slo: highest rate that met it (rate), its goodput, what limited it"
    )

    class Meta(BenchmarkSerializer.Meta):
        fields = (
            *BenchmarkSerializer.Meta.fields, "options", "settings", "targets", "margin", "verdict", "errors",
            "summary", "sweep", "plots", "slo", "slo_verdict", "client", "invalid_reason", "confidence",
            "capacity",
        )  # fmt: skip
        read_only_fields = fields

    @extend_schema_field({"type": "object", "nullable": True})
    def get_slo_verdict(self, obj: Benchmark) -> dict | None:
        return (obj.summary or {}).get("slo")

    @extend_schema_field({"type": "object", "nullable": True})
    def get_client(self, obj: Benchmark) -> dict | None:
        return (obj.summary or {}).get("client")

    @extend_schema_field({"type": "object", "nullable": True})
    def get_confidence(self, obj: Benchmark) -> dict | None:
        return (obj.summary or {}).get("confidence")

    @extend_schema_field({"type": "object", "nullable": True})
    def get_capacity(self, obj: Benchmark) -> dict | None:
        return (obj.summary or {}).get("capacity")

    def get_verdict(self, obj: Benchmark) -> dict | None:
        if not obj.summary:
            return None
        return {
            "passed": obj.summary.get("passed"),
            "margin": obj.summary.get("target_margin", obj.margin),
            "checks": obj.summary.get("targets", {}),
        }

    def get_errors(self, obj: Benchmark) -> list[dict]:
        return list((obj.summary or {}).get("errors") or [])

    def get_plots(self, obj: Benchmark) -> dict[str, str]:
        request = self.context.get("request")
        kinds = available_plots(obj)
        return {
            kind: reverse(
                "benchmark-plot", kwargs={"pk": obj.pk, "kind": kind, "fmt": "png"}, request=request
            )
            for kind in kinds
        }


class _ImageRenderer(BaseRenderer):
    """Lets content negotiation accept image requests; the plot view answers with the bytes itself."""

    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):  # pragma: no cover - unused
        return data


class PNGRenderer(_ImageRenderer):
    media_type, format = "image/png", "png"


class SVGRenderer(_ImageRenderer):
    media_type, format = "image/svg+xml", "svg"


def _sweep_kind(benchmark: Benchmark) -> str | None:
    if not benchmark.sweep:
        return None
    return benchmarking.sweep_kind(benchmark.options or {}) or "concurrency"


def available_plots(benchmark: Benchmark) -> list[str]:
    """The plot kinds this benchmark has data for (histograms and latency always; sweep plots by sweep kind)."""
    kind = _sweep_kind(benchmark)
    extra = {"concurrency": ["throughput"], "rate": list(plots.RATE_KINDS)}.get(kind or "", [])
    return ["ttft", "itl", "latency", *extra]


def plot_response(benchmark: Benchmark, kind: str, fmt: str) -> HttpResponse:
    """The plot as PNG/SVG, or 404 with the reason (unknown kind, nothing measured, no sweep)."""
    if kind not in plots.PLOT_KINDS:
        return error_response(404, f"unknown plot {kind!r}; one of {list(plots.PLOT_KINDS)}", "unknown_plot")
    swept = _sweep_kind(benchmark)
    if kind == "throughput" and swept != "concurrency":
        return error_response(
            404, "throughput vs concurrency needs a concurrency sweep; this benchmark ran none", "no_sweep"
        )
    if kind in plots.RATE_KINDS and swept != "rate":
        return error_response(
            404,
            f"{kind} needs a request-rate sweep (rates or rate_search); this benchmark ran none",
            "no_sweep",
        )
    if kind != "throughput" and not benchmark.samples:
        return error_response(
            404,
            f"benchmark {benchmark.pk} is {benchmark.status} and has no measured requests yet",
            "no_samples",
        )
    capacity = (benchmark.summary or {}).get("capacity")
    body = plots.render(kind, samples=benchmark.samples, sweep=benchmark.sweep, fmt=fmt, capacity=capacity)
    response = HttpResponse(body, content_type=plots.CONTENT_TYPES[fmt])
    if benchmark.status in BenchmarkStatus.terminal():
        response["Cache-Control"] = "private, max-age=3600"  # a finished benchmark's data never changes
    return response


class BenchmarkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Benchmark.objects.select_related("deployment")
    serializer_class = BenchmarkSerializer
    filterset_fields = ("deployment", "status", "partial", "passed", "valid")
    ordering_fields = (
        "created_at", "finished_at", "mean_ttft_ms", "p95_ttft_ms", "output_throughput", "goodput", "capacity_rps",
    )  # fmt: skip

    def get_queryset(self):
        benchmarking.reconcile()
        qs = super().get_queryset()
        if self.action == "list":
            qs = qs.defer("samples", "summary", "sweep", "settings", "options")
        return qs

    def get_serializer_class(self):
        return BenchmarkDetailSerializer if self.action == "retrieve" else BenchmarkSerializer

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # An error answer (no such benchmark, not allowed) to a request that negotiated an image (an Accept
        # header, ?format=png) is JSON all the same: an image renderer cannot draw a dict.
        if isinstance(response, Response) and isinstance(response.accepted_renderer, _ImageRenderer):
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = JSONRenderer.media_type
        return response

    @extend_schema(
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            (200, "image/svg+xml"): OpenApiTypes.STR,
            404: error_answer(
                "No such benchmark, unknown plot, nothing measured yet, or no sweep ran",
                codes=["unknown_plot", "no_samples", "no_sweep"],
            ),
        }
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"plots/(?P<kind>[a-z_]+)\.(?P<fmt>png|svg)",
        url_name="plot",
        renderer_classes=[JSONRenderer, PNGRenderer, SVGRenderer],
    )
    def plot(self, request, pk=None, kind=None, fmt=None):
        """ttft and itl histograms, latency over the run, throughput vs concurrency (concurrency sweeps),
        latency_vs_rate and goodput_vs_rate (request-rate sweeps)."""
        return plot_response(self.get_object(), kind, fmt)


class DeploymentBenchmarkView(APIView):
    """``POST /deployments/{id}/benchmark``: 202 + run; 400 for bad options and 409 unless running (no row; the
    refusal is answered by the API's exception handler)."""

    permission_classes = (ModelPermissions, KnownQueryParameters)
    queryset = Benchmark.objects.none()  # ModelPermissions: POST needs deployments.add_benchmark

    @extend_schema(
        request=benchmarking.BenchmarkOptionsSerializer,
        responses={
            202: RUN_ACCEPTED,
            400: error_answer("Invalid or unknown options; nothing created"),
            409: refusal(
                benchmarking.BenchmarkRefused,
                "Refused: the deployment is not running, has no endpoint yet, or has a run in progress",
            ),
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    def post(self, request, pk: int):
        deployment = get_object_or_404(Deployment.objects.select_related("cluster"), pk=pk)

        def start():
            row, run = benchmarking.start_benchmark(deployment, request.data, user=request.user)
            url = reverse("benchmark-detail", kwargs={"pk": row.pk}, request=request)
            return run, {"benchmark_id": row.pk, "benchmark_url": url, "deployment_id": deployment.pk}

        return start_once(request, "deployment.benchmark", start)
