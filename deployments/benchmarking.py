"""Benchmarks of a deployment's endpoint: validate the options, run the load generator, store the outcome.

One service function, `run_benchmark(deployment, options, *, ctx=None)`, is called by:

* the ``deployment.benchmark`` workflow (``POST /deployments/{id}/benchmark``; `start_benchmark` validates,
  checks the deployment is running, stores a PENDING ``Benchmark`` and launches the run);
* the deploy workflow's optional ``benchmark`` step (``benchmark: {...}`` in the deploy request);
* ``manage.py benchmark`` (no worker: the command's own process runs the requests, with a progress bar).

Flow: options are validated by `BenchmarkOptionsSerializer` (the API's 400s and the deploy request's check use
the same one) → ``LoadSettings`` from the deployment's endpoint URL (checked against the same address rules as a
kubeconfig's server: a cluster cannot point the service at link-local or metadata addresses; the requests go to
the checked IP, ``pinned_address``) and its served
model name → `loadgen.run_benchmark_sync` (or `run_sweep_sync` for a concurrency sweep), whose requests run on
their own event loop in a thread while this thread writes progress (requests done / total, at most once a second
through ``StepContext.progress``) and polls the cancel flag (``StepContext.check_cancel``, one query a second at
most) → `benchstats.summarize` → the row: summary, per-concurrency sweep summaries, compact samples and key
figures as columns.

Cancel stops the requests cleanly (in-flight ones are dropped, finished ones kept): the row is stored CANCELLED
with ``partial`` set and its figures over what finished, then ``Cancelled`` ends the run.  A benchmark in which
no request succeeded is FAILED with the most frequent error (and the step fails with it); every other outcome is
SUCCEEDED, with pass/fail against the targets in ``summary["passed"]`` and ``summary["targets"]``.

With a sweep, the load runs at each concurrency in turn with the same options; ``sweep`` keeps one summary per
concurrency and ``summary`` / ``samples`` are those of the last concurrency that ran (the highest, when the list
is ascending).

Serving to an SLO: ``slo`` (TTFT, TPOT, E2E targets in ms, each optional, and ``min_share``) adds goodput and
attainment to every summary (`benchstats.evaluate_slo`).  ``rates`` runs Poisson arrivals at each rate in turn;
``rate_search`` climbs from ``start`` by ``factor`` until goodput drops (below 95 % of the best so far), a point's
client becomes the bottleneck, or ``max_points`` / ``max_rate`` is reached.  A rate sweep with an SLO ends in
``summary["capacity"]``: the highest rate up to which every point met the SLO (`benchstats.capacity_at_slo`).
``repeat`` runs every point that many times (seeds ``seed``, ``seed + 1`` ...): its summary pools the requests
and carries a Student-t ``confidence`` interval over the repetitions.  Every summary says whether the client was
the bottleneck (``valid``, ``invalid_reason``); the row's ``valid`` is false when any point's client was.  The
whole series is one plan (`_plan`) run by `loadgen.run_series_sync`.

Re-running a step (a worker died mid-benchmark) finds the same row (by benchmark id, or by run for the deploy
step) and measures again from the start; a row already SUCCEEDED is returned as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.db import models, transaction
from django.utils import timezone
from rest_framework import serializers

from core import events as core_events
from core.api import serializers as strict
from core.choices import RunStatus
from core.errors import Refused
from core.models import recorded_user
from core.workflow import Cancelled, StepContext, StepFailed, get_workflow

from . import benchstats
from .catalog import EMBEDDING
from .choices import BenchmarkStatus, DeploymentStatus
from .loadgen import (
    ENDPOINT_PATHS,
    MAX_PROCESSES,
    WORKLOADS,
    BenchmarkResult,
    CancelFlag,
    LoadSettings,
    run_series_sync,
)
from .models import Benchmark, Deployment
from .services import active_run

ProgressCallback = Callable[[int, int], None]

MAX_SWEEP_POINTS = 16
MAX_REPEAT = 20
MAX_RATE = 100_000.0
GOODPUT_DROP = 0.95  # a rate search stops when goodput falls below this share of the best so far


class BenchmarkError(StepFailed):
    """The benchmark could not run or measured nothing; the message says why (a failed step in a run)."""


class BenchmarkRefused(Refused):
    """``start_benchmark`` refuses (409): the deployment cannot be benchmarked now; the message says why."""

    default_status = 409

    class Code(models.TextChoices):
        NOT_RUNNING = "not_running", "The deployment is not running"
        NO_ENDPOINT = "no_endpoint", "The deployment has no endpoint URL yet"
        RUN_IN_PROGRESS = "run_in_progress", "Another run of the deployment is in progress"


# --- options -------------------------------------------------------------------------------------------------


class TargetsSerializer(strict.Serializer):
    ttft_ms = serializers.FloatField(required=False, allow_null=True, min_value=0.001, help_text="Mean TTFT")
    e2e_ms = serializers.FloatField(required=False, allow_null=True, min_value=0.001, help_text="Mean E2E")
    throughput_per_user = serializers.FloatField(
        required=False, allow_null=True, min_value=0.001, help_text="Mean output tokens/s of one request"
    )

    def to_internal_value(self, data: Any) -> dict:
        return {k: v for k, v in super().to_internal_value(data).items() if v is not None}


class SLOSerializer(strict.Serializer):
    """Per-request targets (ms); a request meets the SLO when it meets every one given."""

    ttft_ms = serializers.FloatField(
        required=False, allow_null=True, min_value=0.001, max_value=86_400_000,
        help_text="Time to first token, from the scheduled send",
    )  # fmt: skip
    tpot_ms = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.001,
        max_value=86_400_000,
        help_text="Time per output token",
    )
    e2e_ms = serializers.FloatField(
        required=False, allow_null=True, min_value=0.001, max_value=86_400_000,
        help_text="End-to-end latency, from the scheduled send",
    )  # fmt: skip
    min_share = serializers.FloatField(
        min_value=0.01, max_value=1.0, default=benchstats.DEFAULT_MIN_SHARE,
        help_text="Share of requests that must meet every target for the run to meet the SLO",
    )  # fmt: skip

    def run_validation(self, data: Any = serializers.empty) -> Any:
        # {} is "no SLO", as stored options carry it (they are validated again when the benchmark runs).
        if isinstance(data, dict) and not data:
            return {}
        return super().run_validation(data)

    def validate(self, attrs: dict) -> dict:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if not any(k in attrs for k in benchstats.SLO_KEYS):
            raise serializers.ValidationError(f"give at least one of {', '.join(benchstats.SLO_KEYS)}")
        return attrs


class RateSearchSerializer(strict.Serializer):
    """Climb the request rate until goodput drops."""

    start = serializers.FloatField(min_value=0.001, max_value=MAX_RATE, help_text="First rate, requests/s")
    factor = serializers.FloatField(
        min_value=1.05, max_value=10.0, default=2.0, help_text="Each rate is the previous one times this"
    )
    max_points = serializers.IntegerField(min_value=2, max_value=MAX_SWEEP_POINTS, default=8)
    max_rate = serializers.FloatField(
        min_value=0.001, max_value=MAX_RATE, required=False, allow_null=True, default=None,
        help_text="Highest rate tried",
    )  # fmt: skip

    def validate(self, attrs: dict) -> dict:
        if attrs.get("max_rate") is not None and attrs["max_rate"] < attrs["start"]:
            raise serializers.ValidationError({"max_rate": "must be at least start"})
        return attrs


class BenchmarkOptionsSerializer(strict.Serializer):
    """What a benchmark sends; every field optional. Unknown keys are refused (a typo must not pass silently)."""

    requests = serializers.IntegerField(
        min_value=1, default=100, help_text="Measured requests (per sweep point)"
    )
    concurrency = serializers.IntegerField(min_value=1, default=8, help_text="Requests in flight at most")
    rate = serializers.FloatField(
        min_value=0.001, required=False, allow_null=True, default=None,
        help_text="Poisson arrivals at this many requests/s; null sends as fast as slots free up",
    )  # fmt: skip
    input_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, default=128)
    output_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, default=128)
    dataset = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=500,
        help_text="ShareGPT JSON file, relative to BENCHMARK_DATASET_DIR; replaces the synthetic prompts",
    )  # fmt: skip
    warmup = serializers.IntegerField(min_value=0, default=0, help_text="Unmeasured requests sent first")
    ramp_up = serializers.FloatField(
        min_value=0, max_value=3600, default=0.0, help_text="Seconds over which the first sends are spread"
    )
    timeout = serializers.FloatField(
        min_value=0.1, max_value=86400, required=False, allow_null=True, default=None,
        help_text="Seconds per request (default BENCHMARK_TIMEOUT)",
    )  # fmt: skip
    idle_timeout = serializers.FloatField(
        min_value=0.1, max_value=86400, required=False, allow_null=True, default=None,
        help_text="Longest silence of a stream before it counts as stalled (default BENCHMARK_IDLE_TIMEOUT)",
    )  # fmt: skip
    endpoint = serializers.ChoiceField(
        choices=sorted(ENDPOINT_PATHS), required=False, allow_null=True, default=None,
        help_text="chat, completions or embeddings; default: embeddings for embedding models, else chat",
    )  # fmt: skip
    sweep = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_null=True, default=None,
        allow_empty=False, max_length=MAX_SWEEP_POINTS,
        help_text="Concurrencies to run in turn (each with `requests` requests); plots throughput vs concurrency",
    )  # fmt: skip
    targets = TargetsSerializer(required=False, allow_null=True, default=None)
    margin = serializers.FloatField(min_value=0, max_value=10, default=benchstats.DEFAULT_MARGIN)
    seed = serializers.IntegerField(min_value=0, default=0)
    slo = SLOSerializer(
        required=False, allow_null=True, default=None,
        help_text="Per-request targets: goodput, attainment, and capacity at SLO for a rate sweep",
    )  # fmt: skip
    rates = serializers.ListField(
        child=serializers.FloatField(min_value=0.001, max_value=MAX_RATE), required=False, allow_null=True,
        default=None, allow_empty=False, max_length=MAX_SWEEP_POINTS,
        help_text="Poisson request rates run in turn (each with `requests` requests); default concurrency "
        "BENCHMARK_MAX_CONCURRENCY so the client does not cap the rate",
    )  # fmt: skip
    rate_search = RateSearchSerializer(
        required=False,
        allow_null=True,
        default=None,
        help_text="Climb the rate until goodput drops (needs slo)",
    )
    repeat = serializers.IntegerField(
        min_value=1,
        max_value=MAX_REPEAT,
        default=1,
        help_text="Runs per point; 2+ gives confidence intervals",
    )
    confidence = serializers.FloatField(
        min_value=0.5, max_value=0.999, default=benchstats.DEFAULT_CONFIDENCE, help_text="Confidence level"
    )
    processes = serializers.IntegerField(
        min_value=1, max_value=MAX_PROCESSES, default=1,
        help_text="Load processes sharing the streams (one event loop tops out at a few hundred streams)",
    )  # fmt: skip
    workload = serializers.ChoiceField(
        choices=list(WORKLOADS), default="random",
        help_text="random prompts, shared_prefix (prefix_groups prefixes of prefix_tokens) or multi_turn "
        "(conversations of `turns` turns carrying their history); synthetic and seeded",
    )  # fmt: skip
    prefix_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, default=256)
    prefix_groups = serializers.IntegerField(min_value=1, max_value=100_000, default=4)
    turns = serializers.IntegerField(min_value=1, max_value=1000, default=4)
    max_client_lag_ms = serializers.FloatField(
        min_value=0.1, max_value=3_600_000, default=benchstats.DEFAULT_LAG_LIMIT_MS,
        help_text="p99 send lag or event-loop delay above this flags the run invalid (client-bound)",
    )  # fmt: skip

    def validate(self, attrs: dict) -> dict:
        errors: dict[str, str] = {}
        max_requests, max_concurrency = (
            django_settings.BENCHMARK_MAX_REQUESTS,
            django_settings.BENCHMARK_MAX_CONCURRENCY,
        )
        series = [k for k in ("sweep", "rates", "rate_search") if attrs.get(k)]
        if len(series) > 1:
            errors[series[1]] = f"one of sweep, rates and rate_search at a time (got {' and '.join(series)})"
        for key in ("rates", "rate_search"):
            if attrs.get(key) and attrs.get("rate"):
                errors["rate"] = f"{key} sets the rates; leave rate out"
        if attrs.get("rate_search") and not attrs.get("slo"):
            errors["slo"] = "rate_search climbs until goodput drops: give an slo"
        rates = attrs.get("rates")
        if rates and len(set(rates)) != len(rates):
            errors["rates"] = "each rate once"
        if (rates or attrs.get("rate_search")) and "concurrency" not in (self.initial_data or {}):
            # Paced arrivals capped by a small default concurrency would measure the client's queue.
            attrs["concurrency"] = max_concurrency
        search = attrs.get("rate_search") or {}
        points = len(attrs.get("sweep") or rates or [1]) if not search else search["max_points"]
        if attrs["requests"] * points * attrs["repeat"] > max_requests:
            errors["requests"] = (
                f"at most {max_requests} requests in all (BENCHMARK_MAX_REQUESTS); asked for "
                f"{attrs['requests']} x {points} points x {attrs['repeat']} repetitions"
            )
        if attrs["workload"] != "random" and attrs.get("dataset"):
            errors["workload"] = "a dataset file replaces the synthetic workload; leave workload out"
        if attrs["workload"] == "multi_turn" and attrs.get("endpoint") == "embeddings":
            errors["workload"] = "multi_turn needs a generating endpoint (chat or completions)"
        lowest = min(attrs.get("sweep") or [attrs["concurrency"]])
        if attrs["processes"] > lowest:
            errors["processes"] = f"at most the concurrency ({lowest}): each load process needs a stream"
        if attrs["warmup"] > max_requests:
            errors["warmup"] = f"at most {max_requests}"
        if attrs["concurrency"] > max_concurrency:
            errors["concurrency"] = f"at most {max_concurrency} (BENCHMARK_MAX_CONCURRENCY)"
        sweep = attrs.get("sweep")
        if sweep:
            if any(c > max_concurrency for c in sweep):
                errors["sweep"] = f"concurrencies of at most {max_concurrency}"
            elif len(set(sweep)) != len(sweep):
                errors["sweep"] = "each concurrency once"
        if attrs.get("dataset"):
            try:
                dataset_path(attrs["dataset"])
            except ValueError as exc:
                errors["dataset"] = str(exc)
        if errors:
            raise serializers.ValidationError(errors)
        attrs["targets"] = dict(attrs.get("targets") or {})
        attrs["slo"] = dict(attrs.get("slo") or {})
        return attrs


def dataset_path(name: str) -> Path:
    """The dataset file `name` inside BENCHMARK_DATASET_DIR (ValueError if outside it or missing).

    Callers of the API name a file, never a path of their choosing: reading arbitrary server files is not
    something a benchmark request may do.
    """
    root = Path(django_settings.BENCHMARK_DATASET_DIR).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"datasets are files inside BENCHMARK_DATASET_DIR ({root}); {name!r} is outside it")
    if not path.is_file():
        raise ValueError(f"no dataset {name!r} in {root}")
    return path


def clean_options(options: dict | None) -> dict:
    """Validated options with defaults filled in; raises ``serializers.ValidationError`` (a 400 in the API)."""
    if options is not None and not isinstance(options, dict):
        raise serializers.ValidationError({"non_field_errors": ["benchmark options must be an object"]})
    body = BenchmarkOptionsSerializer(data=options or {})
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        return [m for k, v in detail.items() for m in _flatten(v, f"{prefix}{k}: ")]
    if isinstance(detail, list):
        return [m for v in detail for m in _flatten(v, prefix)]
    return [f"{prefix}{detail}"]


# --- settings for the load generator ---------------------------------------------------------------------------


def served_model_name(deployment: Deployment) -> str:
    return (deployment.placement.get("runtime") or {}).get(
        "served_model_name"
    ) or deployment.served_model_name


def default_endpoint(deployment: Deployment) -> str:
    return "embeddings" if (deployment.model_spec or {}).get("kind") == EMBEDDING else "chat"


def check_endpoint(url: str) -> str:
    """Refuse endpoint addresses a kubeconfig's server could not have (link-local, metadata, ...); return the IP
    that was checked, which the load generator then connects to (``LoadSettings.pinned_address``), so the name
    is not looked up again between the check and the requests (DNS rebinding)."""
    from core.netguard import AddressRefused, check_host_at_connect

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchmarkError(f"endpoint {url!r} is not an http(s) URL")
    try:
        return check_host_at_connect(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout=10
        )
    except AddressRefused as exc:
        raise BenchmarkError(f"endpoint {url} refused: {exc}") from None


def load_settings(deployment: Deployment, opts: dict) -> LoadSettings:
    """LoadSettings for the deployment's endpoint from validated options (BenchmarkError if it cannot run)."""
    url = deployment.endpoint_url
    if not url:
        raise BenchmarkError(f"deployment {deployment.name} has no endpoint URL yet")
    pinned = check_endpoint(url)
    dataset = None
    if opts.get("dataset"):
        try:
            dataset = str(dataset_path(opts["dataset"]))
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from None
    try:
        return LoadSettings(
            base_url=url,
            model=served_model_name(deployment),
            endpoint=opts.get("endpoint") or default_endpoint(deployment),
            num_requests=opts["requests"],
            concurrency=opts["concurrency"],
            request_rate=opts["rate"] if opts.get("rate") else math.inf,
            input_tokens=opts["input_tokens"],
            output_tokens=opts["output_tokens"],
            dataset_path=dataset,
            warmup_requests=opts["warmup"],
            ramp_up_s=opts["ramp_up"],
            timeout_s=opts.get("timeout") or django_settings.BENCHMARK_TIMEOUT,
            idle_timeout_s=opts.get("idle_timeout") or django_settings.BENCHMARK_IDLE_TIMEOUT,
            pinned_address=pinned,
            seed=opts["seed"],
            workload=opts.get("workload", "random"),
            prefix_tokens=opts.get("prefix_tokens", 256),
            prefix_groups=opts.get("prefix_groups", 4),
            turns=opts.get("turns", 4),
            processes=opts.get("processes", 1),
        )
    except ValueError as exc:
        raise BenchmarkError(f"invalid benchmark settings: {exc}") from None


# --- progress and cancel bridges ------------------------------------------------------------------------------


class _Cancel:
    """The loadgen's cancel flag: the run's cancel request (via ctx) or a caller's own flag (Ctrl-C)."""

    def __init__(self, ctx: StepContext | None, external: CancelFlag | None) -> None:
        self.ctx, self.external, self.cancelled = ctx, external, False

    def is_set(self) -> bool:
        if self.cancelled:
            return True
        if self.external is not None and self.external.is_set():
            self.cancelled = True
        elif self.ctx is not None:
            try:
                self.ctx.check_cancel()  # at most one query a second (the context throttles)
            except Cancelled:
                self.cancelled = True
        return self.cancelled


def _reporter(ctx: StepContext | None, progress: ProgressCallback | None) -> ProgressCallback:
    def report(done: int, total: int) -> None:
        if ctx is not None:
            ctx.progress(done / total if total else 1.0, f"{done}/{total} requests", force=done >= total)
        if progress is not None:
            progress(done, total)

    return report


# --- the service ---------------------------------------------------------------------------------------------


def _row(deployment: Deployment, opts: dict, ctx: StepContext | None, user: Any) -> Benchmark:
    """The row this call fills: the run's own (a re-run of the same step finds it) or a new one."""
    fields = {"options": opts, "targets": opts["targets"], "margin": opts["margin"], "slo": opts["slo"]}
    if ctx is not None:
        row = Benchmark.objects.filter(run_id=ctx.run.pk, deployment=deployment).first()
        if row is not None:
            return row
        return Benchmark.objects.create(deployment=deployment, run_id=ctx.run.pk, created_by=ctx.run.created_by,
                                        **fields)  # fmt: skip
    return Benchmark.objects.create(deployment=deployment, created_by=recorded_user(user), **fields)


def _finish(row: Benchmark, status: str, **fields: Any) -> None:
    now = timezone.now()
    with transaction.atomic():  # the row and its outbox event commit together
        Benchmark.objects.filter(pk=row.pk).update(status=status, finished_at=now, **fields)
        row.status, row.finished_at = status, now
        for key, value in fields.items():
            setattr(row, key, value)
        core_events.emit(
            "benchmark.finished",
            f"benchmarks/{row.pk}",
            {
                "benchmark": row.pk,
                "deployment": row.deployment_id,
                "run": str(row.run_id or ""),
                "status": status,
                "error": str(fields.get("error", ""))[:1000],
                "summary": row.summary or {},
            },
        )


def result_dict(row: Benchmark) -> dict:
    """What a step stores as its output and the command prints: the id, status and the summary."""
    return {"benchmark_id": row.pk, "status": row.status, "partial": row.partial, **(row.summary or {})}


def run_benchmark(
    deployment: Deployment,
    options: dict | None,
    *,
    ctx: StepContext | None = None,
    benchmark: Benchmark | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    user: Any = None,
) -> dict:
    """Measure the deployment's endpoint with `options` and store a ``Benchmark``; returns `result_dict`.

    ``ctx``: inside a workflow step (progress onto the step, cancel from the run). ``benchmark``: the row to fill
    (else the run's row or a new one). ``progress(done, total)`` / ``cancel.is_set()``: for callers without a
    run (the management command).  Raises ``BenchmarkError`` when it cannot run or no request succeeded and,
    with ``ctx``, ``Cancelled`` after storing the partial result of a cancelled run.
    """
    try:
        opts = clean_options(options)
    except serializers.ValidationError as exc:
        if benchmark is not None:
            _finish(benchmark, BenchmarkStatus.FAILED, error="invalid options")
        raise BenchmarkError("invalid benchmark options: " + "; ".join(_flatten(exc.detail))) from None
    row = benchmark or _row(deployment, opts, ctx, user)
    if row.status == BenchmarkStatus.SUCCEEDED:
        return result_dict(row)
    try:
        load = load_settings(deployment, opts)
    except BenchmarkError as exc:
        _finish(row, BenchmarkStatus.FAILED, error=str(exc))
        raise
    now = timezone.now()
    claimed = Benchmark.objects.filter(pk=row.pk, status__in=BenchmarkStatus.active()).update(
        status=BenchmarkStatus.RUNNING, started_at=now, finished_at=None, settings=load.public_dict(),
        options=opts, targets=opts["targets"], margin=opts["margin"], slo=opts["slo"], error="", partial=False,
    )  # fmt: skip
    if not claimed:
        row.refresh_from_db(fields=["status"])
        raise BenchmarkError(f"benchmark {row.pk} is already {row.status}")
    row.status, row.started_at = BenchmarkStatus.RUNNING, now

    flag = _Cancel(ctx, cancel)
    report = _reporter(ctx, progress)
    plan, total = _plan(load, opts)
    try:
        results = run_series_sync(plan, total, report, flag, poll_s=load.progress_interval_s)
    except Exception as exc:  # the load generator itself broke (bad dataset file, ...): record it, then fail
        _finish(row, BenchmarkStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:4000])
        raise BenchmarkError(f"the benchmark could not run: {type(exc).__name__}: {exc}") from None
    _store(row, opts, results, cancelled=flag.cancelled)
    if row.status == BenchmarkStatus.CANCELLED and ctx is not None:
        raise Cancelled("cancel requested")
    if row.status == BenchmarkStatus.FAILED:
        raise BenchmarkError(row.error)
    return result_dict(row)


# --- the series of runs ----------------------------------------------------------------------------------------


def sweep_kind(opts: dict) -> str | None:
    """ "concurrency" or "rate" for a sweep, None for a single point."""
    if opts.get("sweep"):
        return "concurrency"
    if opts.get("rates") or opts.get("rate_search"):
        return "rate"
    return None


def _summary_kwargs(opts: dict) -> dict[str, Any]:
    slo = dict(opts.get("slo") or {})
    min_share = slo.pop("min_share", benchstats.DEFAULT_MIN_SHARE)
    return {
        "targets": opts["targets"] or None,
        "margin": opts["margin"],
        "slo": slo or None,
        "min_share": min_share,
        "lag_limit_ms": opts.get("max_client_lag_ms", benchstats.DEFAULT_LAG_LIMIT_MS),
    }


def _summarize_point(opts: dict, group: list[BenchmarkResult]) -> dict:
    return benchstats.summarize_repetitions(
        group, opts.get("confidence", benchstats.DEFAULT_CONFIDENCE), **_summary_kwargs(opts)
    )


def _groups(results: list[BenchmarkResult], repeat: int) -> list[list[BenchmarkResult]]:
    return [results[i : i + repeat] for i in range(0, len(results), repeat)]


def _plan(
    load: LoadSettings, opts: dict
) -> tuple[Callable[[list[BenchmarkResult]], LoadSettings | None], int]:
    """The series as a plan for `loadgen.run_series` (runs on the load generator's thread: no database) and
    the most requests it may send."""
    repeat = opts.get("repeat", 1)

    def repeated(point: LoadSettings) -> list[LoadSettings]:
        return [replace(point, seed=load.seed + k) for k in range(repeat)]

    search = opts.get("rate_search")
    if not search:
        if opts.get("sweep"):
            points = [replace(load, concurrency=c) for c in opts["sweep"]]
        elif opts.get("rates"):
            points = [replace(load, request_rate=r) for r in opts["rates"]]
        else:
            points = [load]
        runs = [run for point in points for run in repeated(point)]

        def next_listed(done: list[BenchmarkResult]) -> LoadSettings | None:
            return runs[len(done)] if len(done) < len(runs) else None

        return next_listed, len(runs) * load.num_requests

    def next_run(done: list[BenchmarkResult]) -> LoadSettings | None:
        groups = _groups(done, repeat)
        if groups and len(groups[-1]) < repeat:  # the current point's next repetition
            current = groups[-1][0].settings
            return replace(current, seed=load.seed + len(groups[-1]))
        if len(groups) >= search["max_points"]:
            return None
        if groups:
            summaries = [_summarize_point(opts, g) for g in groups]
            best = max(s.get("goodput") or 0.0 for s in summaries)
            last = summaries[-1]
            if last.get("valid") is False or (last.get("goodput") or 0.0) < GOODPUT_DROP * best:
                return None  # past the peak, or the client is the limit now: higher rates say nothing more
        rate = search["start"] * search["factor"] ** len(groups)
        if search.get("max_rate") is not None and rate > search["max_rate"] * (1 + 1e-9):
            return None
        return replace(load, request_rate=rate, seed=load.seed)

    return next_run, search["max_points"] * repeat * load.num_requests


def _store(row: Benchmark, opts: dict, results: list[BenchmarkResult], *, cancelled: bool) -> None:
    repeat = opts.get("repeat", 1)
    groups = _groups(results, repeat)
    summaries = [_summarize_point(opts, g) for g in groups]
    kind = sweep_kind(opts)
    if groups:
        main, summary = benchstats.pooled(groups[-1]), dict(summaries[-1])
    else:  # cancelled before the first run started
        main, summary = None, {}
    planned = len(opts.get("sweep") or opts.get("rates") or [1]) * repeat
    partial = (
        cancelled
        or any(r.partial for r in results)
        or (not opts.get("rate_search") and len(results) < planned)
        or bool(groups and len(groups[-1]) < repeat)
    )
    capacity = None
    if summary:
        summary["partial"] = partial
        summary["sweep_kind"] = kind
        invalid = [(g, s) for g, s in zip(groups, summaries, strict=True) if not s.get("valid", True)]
        if invalid and kind:
            summary["valid"] = False
            summary["invalid_reason"] = "; ".join(
                f"at {_point_label(g[0].settings, kind)}: {s['invalid_reason']}" for g, s in invalid
            )
        if kind == "rate" and opts.get("slo"):
            capacity = benchstats.capacity_at_slo(summaries)
            summary["capacity"] = capacity
    fields: dict[str, Any] = {
        "summary": summary,
        "sweep": summaries if kind else [],
        "samples": benchstats.encode_samples(main.requests) if main is not None else {},
        "partial": partial,
        "capacity_rps": capacity["rate"] if capacity else None,
        "invalid_reason": (summary.get("invalid_reason") or "")[:4000],
        **{key: summary.get(key) for key in Benchmark.KEY_FIGURES},
    }
    if cancelled:
        status, fields["error"] = BenchmarkStatus.CANCELLED, "cancelled by request"
    elif not summary.get("successful_requests"):
        errors = summary.get("errors") or []
        top = errors[0]["message"] if errors else "no request finished"
        status = BenchmarkStatus.FAILED
        fields["error"] = f"no request succeeded ({summary.get('failed_requests', 0)} failed): {top}"[:4000]
    else:
        status = BenchmarkStatus.SUCCEEDED
    _finish(row, status, **fields)


def _point_label(settings: LoadSettings, kind: str) -> str:
    if kind == "concurrency":
        return f"concurrency {settings.concurrency}"
    return f"{settings.request_rate:g} req/s"


def describe_options(opts: dict) -> str:
    """What a benchmark sends, in a few words (run titles)."""
    if opts.get("rate_search"):
        what = f"{opts['requests']} requests per rate from {opts['rate_search']['start']:g} req/s until goodput drops"
    elif opts.get("rates"):
        what = f"{opts['requests']} requests at " + ",".join(f"{r:g}" for r in opts["rates"]) + " req/s"
    else:
        what = f"{opts['requests']} requests at concurrency " + (
            ",".join(map(str, opts["sweep"])) if opts.get("sweep") else str(opts["concurrency"])
        )
    if opts.get("repeat", 1) > 1:
        what += f", {opts['repeat']} times"
    return what


# --- the benchmark workflow (``deployment.benchmark``, declared in workflows.py) ---------------------------------


def check_benchmarkable(deployment: Deployment) -> None:
    """A benchmark needs a running deployment with an endpoint and no other run of it in progress (409)."""
    Code = BenchmarkRefused.Code
    if deployment.status != DeploymentStatus.RUNNING:
        raise BenchmarkRefused(
            f"deployment {deployment.name} is {deployment.status}; benchmarks need a running deployment",
            code=Code.NOT_RUNNING,
        )
    if not deployment.endpoint_url:
        raise BenchmarkRefused(f"deployment {deployment.name} has no endpoint URL yet", code=Code.NO_ENDPOINT)
    if active_run(deployment) is not None:
        raise BenchmarkRefused(
            f"deployment {deployment.name} has a run in progress", code=Code.RUN_IN_PROGRESS
        )


def start_benchmark(
    deployment: Deployment, options: dict | None, *, user: Any = None
) -> tuple[Benchmark, Any]:
    """Validate (ValidationError → 400), check the deployment (BenchmarkRefused → 409), store and launch."""
    opts = clean_options(options)
    check_benchmarkable(deployment)
    with transaction.atomic():
        row = Benchmark.objects.create(
            deployment=deployment,
            options=opts,
            targets=opts["targets"],
            margin=opts["margin"],
            slo=opts["slo"],
            created_by=recorded_user(user),
        )
        what = describe_options(opts)
        run = get_workflow("deployment.benchmark").launch(
            subject=deployment,
            params={"deployment_id": deployment.pk, "benchmark_id": row.pk},
            user=user,
            title=f"Benchmark {deployment.name}: {what}",
        )
        Benchmark.objects.filter(pk=row.pk).update(run=run)
        row.run = run
    return row, run


def benchmark_step(ctx: StepContext) -> dict:
    """Body of the ``deployment.benchmark`` workflow's only step."""
    row = Benchmark.objects.select_related("deployment").filter(pk=ctx.params["benchmark_id"]).first()
    if row is None:
        raise StepFailed(f"benchmark {ctx.params['benchmark_id']} no longer exists")
    return run_benchmark(row.deployment, row.options, ctx=ctx, benchmark=row)


def benchmark_stopped(ctx: StepContext) -> dict:
    """Cleanup: a benchmark whose run failed or was cancelled before it stored anything says so."""
    ctx.run.refresh_from_db(fields=["error", "cancel_requested"])
    status = BenchmarkStatus.CANCELLED if ctx.run.cancel_requested else BenchmarkStatus.FAILED
    updated = Benchmark.objects.filter(
        pk=ctx.params["benchmark_id"], status__in=BenchmarkStatus.active()
    ).update(status=status, error=ctx.run.error or str(status), finished_at=timezone.now())
    return {"marked": str(status) if updated else "already recorded"}


def reconcile() -> int:
    """Settle benchmarks whose run ended without them (cancelled while still queued: no step ran)."""
    now = timezone.now()
    active = Benchmark.objects.filter(status__in=BenchmarkStatus.active())
    n = active.filter(run__status=RunStatus.CANCELLED).update(
        status=BenchmarkStatus.CANCELLED, error="the run was cancelled before the benchmark started",
        finished_at=now,
    )  # fmt: skip
    n += active.filter(run__status=RunStatus.FAILED).update(
        status=BenchmarkStatus.FAILED, error="the run failed before the benchmark started", finished_at=now
    )
    return n
