"""Benchmark a running deployment from the command line, with a progress bar and a summary table at the end.

    manage.py benchmark DEPLOYMENT --requests 500 --concurrency 32 [--sweep 1,8,32,128]
        [--input-tokens N --output-tokens N --rate R --endpoint chat|completions|embeddings --timeout S]
        [--slo-ttft-ms MS --slo-tpot-ms MS --slo-e2e-ms MS --slo-min-share F]
        [--rates 1,2,4,8 | --rate-search START [--rate-factor F --rate-points N --max-rate R]]
        [--repeat N --confidence F --processes N --workload random|shared_prefix|multi_turn --max-client-lag-ms MS]

DEPLOYMENT is an id or a name.  The same service as the API (``benchmarking.run_benchmark``) runs in this
process (no Celery worker needed) and stores a ``Benchmark`` row like any other, as the ``deployment.benchmark``
run this process carries out (``core.workflow.start_in_process``): it is listed under /runs with its progress, can
be cancelled through the API, and while it runs the deployment has a run in progress.

Ctrl-C or SIGTERM stops the requests cleanly: what finished is stored, marked partial and printed, the benchmark
and its run end cancelled, and the command exits with 128 + the signal number (a second signal stops at once; the
row and run are closed all the same).  A process killed outright (SIGKILL) cannot close anything: its heartbeat
stops, and the reaper ends the run and the benchmark as failed, naming the process (``WORKFLOW_STALE_AFTER``).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework import serializers
from tqdm import tqdm

from core import workflow
from core.workflow import Cancelled
from deployments import benchmarking
from deployments.models import Benchmark, Deployment

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

ROWS = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(summary: dict) -> list[str]:
    """The printed summary: latency percentiles (ms), throughputs, failures with their messages."""
    out = [f"{'':6} {'mean':>10} {'median':>10} {'p95':>10} {'p99':>10}   (ms)"]
    for label, key in ROWS:
        cells = " ".join(
            f"{_f(summary.get(f'{stat}_{key}')):>10}" for stat in ("mean", "median", "p95", "p99")
        )
        out.append(f"{label:6} {cells}")
    out += [
        "",
        f"successful requests      {summary.get('successful_requests', 0)}",
        f"failed requests          {summary.get('failed_requests', 0)}",
        f"duration                 {_f(summary.get('duration_s'))} s",
        f"request throughput       {_f(summary.get('request_throughput'))} req/s",
        f"input token throughput   {_f(summary.get('input_throughput'), 1)} tok/s",
        f"output token throughput  {_f(summary.get('output_throughput'), 1)} tok/s",
        f"output tok/s per user    {_f(summary.get('mean_output_throughput_per_user'), 1)} (mean)",
    ]
    for err in summary.get("errors") or []:
        out.append(f"  {err['count']:>6} x {err['message']}")
    scheduled = summary.get("p99_ttft_from_scheduled_ms")
    if scheduled is not None:
        out.append(
            f"TTFT from scheduled send  mean {_f(summary.get('mean_ttft_from_scheduled_ms'))}, p99 {_f(scheduled)} ms"
        )
    slo = summary.get("slo")
    if slo:
        targets = ", ".join(f"{k} <= {v:g}" for k, v in slo["targets"].items())
        out.append(
            f"SLO ({targets}): {'MET' if slo['passed'] else 'MISSED'}, {slo['attainment']:.1%} of requests met "
            f"every target (needs {slo['min_share']:.0%}); goodput {_f(slo['goodput'])} req/s"
        )
        for key, share in slo["shares"].items():
            out.append(f"  {key}: {share:.1%} of requests")
    capacity = summary.get("capacity")
    if capacity:
        rate = capacity.get("rate")
        out.append(
            f"capacity at SLO: {'none' if rate is None else f'{rate:g} req/s'} (limited by: {capacity['limited_by']})"
        )
    for key, ci in (summary.get("confidence") or {}).items():
        if ci.get("low") is not None:
            out.append(
                f"  {key}: {_f(ci['mean'])} [{_f(ci['low'])}, {_f(ci['high'])}] ({ci['level']:.0%}, {ci['n']} runs)"
            )
    client = summary.get("client")
    if client:
        lag, loop = client["send_lag_ms"], client["loop_delay_ms"]
        out.append(
            f"client: {client['processes']} process(es), send lag p99 {_f(lag['p99'])} ms, loop delay p99 "
            f"{_f(loop['p99'])} ms, CPU {', '.join(f'{c:g} %' for c in client['cpu_percent']) or '-'}"
        )
    if summary.get("valid") is False:
        out.append(f"INVALID (the client was the bottleneck): {summary.get('invalid_reason')}")
    if summary.get("targets"):
        verdict = "PASSED" if summary.get("passed") else "FAILED"
        out.append(f"targets: {verdict} (margin {summary.get('target_margin', 0):.0%})")
        for key, check in summary["targets"].items():
            out.append(
                f"  {key}: target {check['target']:g}, limit {_f(check['limit'])}, "
                f"measured {_f(check['measured'])} -> {'ok' if check['passed'] else 'FAILED'}"
            )
    return out


def sweep_lines(sweep: list[dict], by_rate: bool = False) -> list[str]:
    first = "offered r/s" if by_rate else "concurrency"
    out = [
        f"{first:>11} {'ok':>6} {'failed':>6} {'req/s':>9} {'out tok/s':>10} "
        f"{'TTFT mean':>10} {'TTFT p99':>10} {'ITL mean':>9} {'p99 sched':>10} {'goodput':>8} {'met':>7}  valid"
    ]
    for p in sweep:
        slo = p.get("slo") or {}
        label = f"{p.get('request_rate'):g}" if by_rate else str(p.get("concurrency"))
        out.append(
            f"{label:>11} {p.get('successful_requests', 0):>6} {p.get('failed_requests', 0):>6} "
            f"{_f(p.get('request_throughput')):>9} {_f(p.get('output_throughput'), 1):>10} "
            f"{_f(p.get('mean_ttft_ms')):>10} {_f(p.get('p99_ttft_ms')):>10} {_f(p.get('mean_itl_ms')):>9} "
            f"{_f(p.get('p99_ttft_from_scheduled_ms')):>10} {_f(p.get('goodput')):>8} "
            f"{(format(slo['attainment'], '.1%') if slo else '-'):>7}  {'yes' if p.get('valid', True) else 'NO'}"
        )
    return out


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"{flag} takes comma-separated numbers, e.g. 1,2,4") from None


class Command(BaseCommand):
    help = "Benchmark a running deployment's endpoint (TTFT/TPOT/ITL/E2E, throughput) and store the result."

    def add_arguments(self, parser) -> None:
        parser.add_argument("deployment", help="deployment id or name")
        parser.add_argument("--requests", type=int, default=100)
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="default 8; with --rates/--rate-search the most allowed",
        )
        parser.add_argument("--sweep", default="", help="comma-separated concurrencies, e.g. 1,8,32,128")
        parser.add_argument("--input-tokens", type=int, default=128)
        parser.add_argument("--output-tokens", type=int, default=128)
        parser.add_argument(
            "--rate", type=float, default=None, help="requests/s (Poisson); default unlimited"
        )
        parser.add_argument("--endpoint", choices=["chat", "completions", "embeddings"], default=None)
        parser.add_argument("--timeout", type=float, default=None, help="seconds per request")
        parser.add_argument("--idle-timeout", type=float, default=None, help="seconds of silence = stalled")
        parser.add_argument("--warmup", type=int, default=0)
        parser.add_argument(
            "--ramp-up", type=float, default=0.0, help="seconds to spread the first sends over"
        )
        parser.add_argument("--dataset", default=None, help="ShareGPT file in BENCHMARK_DATASET_DIR")
        parser.add_argument("--target-ttft-ms", type=float, default=None)
        parser.add_argument("--target-e2e-ms", type=float, default=None)
        parser.add_argument("--target-throughput-per-user", type=float, default=None)
        parser.add_argument("--margin", type=float, default=None)
        parser.add_argument(
            "--slo-ttft-ms", type=float, default=None, help="SLO: TTFT from the scheduled send"
        )
        parser.add_argument("--slo-tpot-ms", type=float, default=None, help="SLO: time per output token")
        parser.add_argument("--slo-e2e-ms", type=float, default=None, help="SLO: E2E from the scheduled send")
        parser.add_argument("--slo-min-share", type=float, default=None, help="share that must meet it (0.9)")
        parser.add_argument("--rates", default="", help="comma-separated request rates, e.g. 1,2,4,8")
        parser.add_argument(
            "--rate-search", type=float, default=None, help="climb from this rate until goodput drops"
        )
        parser.add_argument("--rate-factor", type=float, default=None)
        parser.add_argument("--rate-points", type=int, default=None)
        parser.add_argument("--max-rate", type=float, default=None)
        parser.add_argument("--repeat", type=int, default=None, help="runs per point (confidence intervals)")
        parser.add_argument("--confidence", type=float, default=None)
        parser.add_argument("--processes", type=int, default=None, help="load processes sharing the streams")
        parser.add_argument("--workload", choices=["random", "shared_prefix", "multi_turn"], default=None)
        parser.add_argument("--prefix-tokens", type=int, default=None)
        parser.add_argument("--prefix-groups", type=int, default=None)
        parser.add_argument("--turns", type=int, default=None)
        parser.add_argument("--max-client-lag-ms", type=float, default=None)
        parser.add_argument("--force", action="store_true", help="benchmark even if not running")
        parser.add_argument("--no-progress", action="store_true")

    def _deployment(self, ref: str) -> Deployment:
        qs = Deployment.objects.select_related("cluster")
        found = qs.filter(pk=int(ref)).first() if ref.isdigit() else None
        if found is None:
            matches = list(qs.filter(name=ref).exclude(status="deleted")[:2])
            if len(matches) > 1:
                raise CommandError(f"several deployments are named {ref!r}; give the id")
            found = matches[0] if matches else None
        if found is None:
            raise CommandError(f"no deployment {ref!r}")
        return found

    def _options(self, o: dict) -> dict:
        options: dict[str, Any] = {
            "requests": o["requests"], "input_tokens": o["input_tokens"],
            "output_tokens": o["output_tokens"], "warmup": o["warmup"], "ramp_up": o["ramp_up"],
        }  # fmt: skip
        for key in (
            "concurrency", "rate", "endpoint", "timeout", "idle_timeout", "dataset", "margin", "repeat", "confidence",
            "processes", "workload", "prefix_tokens", "prefix_groups", "turns", "max_client_lag_ms",
        ):  # fmt: skip
            if o[key] is not None:
                options[key] = o[key]
        slo = {
            k: o[f"slo_{k}"]
            for k in ("ttft_ms", "tpot_ms", "e2e_ms", "min_share")
            if o[f"slo_{k}"] is not None
        }
        if slo:
            options["slo"] = slo
        if o["rates"]:
            options["rates"] = _floats(o["rates"], "--rates")
        if o["rate_search"] is not None:
            search = {"start": o["rate_search"]}
            for key, flag in (
                ("factor", "rate_factor"),
                ("max_points", "rate_points"),
                ("max_rate", "max_rate"),
            ):
                if o[flag] is not None:
                    search[key] = o[flag]
            options["rate_search"] = search
        if o["sweep"]:
            try:
                options["sweep"] = [int(c) for c in o["sweep"].split(",") if c.strip()]
            except ValueError:
                raise CommandError("--sweep takes comma-separated integers, e.g. 1,8,32") from None
        targets = {
            "ttft_ms": o["target_ttft_ms"],
            "e2e_ms": o["target_e2e_ms"],
            "throughput_per_user": o["target_throughput_per_user"],
        }
        if any(v is not None for v in targets.values()):
            options["targets"] = {k: v for k, v in targets.items() if v is not None}
        return options

    def _start(self, deployment: Deployment, opts: dict) -> tuple[Benchmark, Any]:
        """The row and the run this process carries out, stored together (``benchmarking.start_benchmark``'s
        shape, without a worker)."""
        what = benchmarking.describe_options(opts)
        owner = f"manage.py benchmark (pid {os.getpid()} on {socket.gethostname()})"
        with transaction.atomic():
            row = Benchmark.objects.create(
                deployment=deployment,
                options=opts,
                targets=opts["targets"],
                margin=opts["margin"],
                slo=opts["slo"],
            )
            run = workflow.start_in_process(
                "deployment.benchmark",
                owner=owner,
                subject=deployment,
                params={"deployment_id": deployment.pk, "benchmark_id": row.pk},
                title=f"Benchmark {deployment.name}: {what} (manage.py benchmark)",
            )
            Benchmark.objects.filter(pk=row.pk).update(run=run)
            row.run = run
        return row, run

    def handle(self, *args, **o) -> None:
        deployment = self._deployment(o["deployment"])
        options = self._options(o)
        try:
            opts = benchmarking.clean_options(options)
        except serializers.ValidationError as exc:
            raise CommandError("invalid options: " + "; ".join(benchmarking._flatten(exc.detail))) from None
        if not o["force"]:
            try:
                benchmarking.check_benchmarkable(deployment)
            except benchmarking.BenchmarkRefused as exc:
                raise CommandError(f"{exc} (--force benchmarks anyway)") from None

        # Ctrl-C or SIGTERM asks the load generator to stop; what finished is stored (partial) and printed. The
        # handler only sets a flag: the main thread does the writing. A second signal interrupts at once.
        stop = threading.Event()
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            received.append(signum)
            stop.set()

        previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
        bar = tqdm(total=None, unit="req", disable=o["no_progress"], file=self.stderr._out)

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

        def measure(ctx: workflow.StepContext) -> dict:
            return benchmarking.run_benchmark(
                deployment, options, ctx=ctx, benchmark=row, progress=progress, cancel=stop
            )

        try:
            row, run = self._start(deployment, opts)
            self.stdout.write(
                f"Benchmarking {deployment.name} at {deployment.endpoint_url} (run {run.pk}) ..."
            )
            try:
                result = workflow.carry_out_in_process(run, measure)
            except Cancelled:
                # Stored as cancelled with what finished (this process's stop, or the run's cancel).
                row.refresh_from_db()
                result = benchmarking.result_dict(row)
            except benchmarking.BenchmarkError as exc:
                # Every request failed (or it could not start): show what was measured, then fail.
                row.refresh_from_db()
                if row.summary:
                    self.stdout.write("\n".join(summary_lines(row.summary)))
                raise CommandError(str(exc)) from None
            except KeyboardInterrupt:  # a second signal: the row and the run were closed on the way out
                raise SystemExit(128 + (received[0] if received else signal.SIGINT)) from None
        finally:
            bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        row.refresh_from_db()
        self.stdout.write(
            f"\nBenchmark {row.pk}: {row.status}"
            + (" (partial: stopped early)" if row.partial else "")
            + f", concurrency {result.get('concurrency')}"
        )
        if row.sweep:
            by_rate = benchmarking.sweep_kind(row.options or {}) == "rate"
            self.stdout.write("\n".join(sweep_lines(row.sweep, by_rate)) + "\n")
            last = (
                f"{result.get('request_rate'):g} req/s"
                if by_rate
                else f"concurrency {result.get('concurrency')}"
            )
            self.stdout.write(f"Last point ({last}):")
        self.stdout.write("\n".join(summary_lines(result)))
        if received:
            raise SystemExit(128 + received[0])
