"""Benchmark a running deployment from the command line, with a progress bar and a summary table at the end.

    manage.py benchmark DEPLOYMENT --requests 500 --concurrency 32 [--sweep 1,8,32,128]
        [--input-tokens N --output-tokens N --rate R --endpoint chat|completions|embeddings --timeout S]

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
    if summary.get("targets"):
        verdict = "PASSED" if summary.get("passed") else "FAILED"
        out.append(f"targets: {verdict} (margin {summary.get('target_margin', 0):.0%})")
        for key, check in summary["targets"].items():
            out.append(
                f"  {key}: target {check['target']:g}, limit {_f(check['limit'])}, "
                f"measured {_f(check['measured'])} -> {'ok' if check['passed'] else 'FAILED'}"
            )
    return out


def sweep_lines(sweep: list[dict]) -> list[str]:
    out = [
        f"{'concurrency':>11} {'ok':>6} {'failed':>6} {'req/s':>9} {'out tok/s':>10} "
        f"{'TTFT mean':>10} {'TTFT p99':>10} {'ITL mean':>9}"
    ]
    for p in sweep:
        out.append(
            f"{p.get('concurrency'):>11} {p.get('successful_requests', 0):>6} {p.get('failed_requests', 0):>6} "
            f"{_f(p.get('request_throughput')):>9} {_f(p.get('output_throughput'), 1):>10} "
            f"{_f(p.get('mean_ttft_ms')):>10} {_f(p.get('p99_ttft_ms')):>10} {_f(p.get('mean_itl_ms')):>9}"
        )
    return out


class Command(BaseCommand):
    help = "Benchmark a running deployment's endpoint (TTFT/TPOT/ITL/E2E, throughput) and store the result."

    def add_arguments(self, parser) -> None:
        parser.add_argument("deployment", help="deployment id or name")
        parser.add_argument("--requests", type=int, default=100)
        parser.add_argument("--concurrency", type=int, default=8)
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
            "requests": o["requests"], "concurrency": o["concurrency"], "input_tokens": o["input_tokens"],
            "output_tokens": o["output_tokens"], "warmup": o["warmup"], "ramp_up": o["ramp_up"],
        }  # fmt: skip
        for key in ("rate", "endpoint", "timeout", "idle_timeout", "dataset", "margin"):
            if o[key] is not None:
                options[key] = o[key]
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
        what = f"{opts['requests']} requests at concurrency " + (
            ",".join(map(str, opts["sweep"])) if opts.get("sweep") else str(opts["concurrency"])
        )
        owner = f"manage.py benchmark (pid {os.getpid()} on {socket.gethostname()})"
        with transaction.atomic():
            row = Benchmark.objects.create(
                deployment=deployment, options=opts, targets=opts["targets"], margin=opts["margin"]
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
            self.stdout.write("\n".join(sweep_lines(row.sweep)) + "\n")
            self.stdout.write(f"Last point (concurrency {result.get('concurrency')}):")
        self.stdout.write("\n".join(summary_lines(result)))
        if received:
            raise SystemExit(128 + received[0])
