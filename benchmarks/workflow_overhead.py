"""Workflow engine overhead: steps/s of a 10-step no-op workflow beside raw Celery no-op tasks/s.

Both are measured in the same run, on the same worker (a real `celery worker` subprocess, prefork, 2 processes),
broker (Redis) and database (PostgreSQL):
  * raw: N plain Celery chains of 10 no-op tasks (`bench.raw_noop`), results ignored;
  * engine: N runs of `bench.noop10` (each step: claim by compare-and-set, events, progress/ETA, chain on).
The ratio engine/raw is the figure: what the durability (DB truth, idempotent entry, events) costs per step.

Where the difference goes is printed beside it, measured in the same run:
  * per step, inside the worker (``benchmarks/noop_workflow.py`` with ``BENCH_PROFILE_DIR``): wall and CPU time in
    the task, and time and statements in PostgreSQL, for the raw task and for the engine's steps;
  * the engine again with ``WORKFLOW_WAIT_FOR_FLUSH=0`` (a fresh worker; its hot statements commit without waiting
    for the WAL flush): the difference between the two engine figures is the flush;
  * one flushed and one unflushed commit of a one-row UPDATE on this machine, timed from this process: the
    floor each of the step's durable transitions pays, which raw Celery (it writes nothing) does not.

Usage: python benchmarks/workflow_overhead.py [--runs 200] [--concurrency 2] [--no-flush-phase]
(DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/budcluster_bench, CELERY_BROKER_URL to Redis db 13.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("WORKFLOW_EXTRA_MODULES", "benchmarks.noop_workflow")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--no-flush-phase", action="store_true", help="skip the engine run with WORKFLOW_WAIT_FOR_FLUSH=0"
    )
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import redis
    from celery import chain
    from django.conf import settings

    from benchmarks.noop_workflow import NOOP10, raw_noop
    from core.choices import RunStatus
    from core.models import Run

    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    r.flushdb()
    log = open(ROOT / "var" / "bench-worker.log", "wb")  # noqa: SIM115
    steps = 10 * args.runs

    profiles = []

    def start_worker(**env: str) -> subprocess.Popen:
        profiles.append(tempfile.mkdtemp(prefix="bench-profile-"))
        env = {**env, "BENCH_PROFILE_DIR": profiles[-1]}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "budcluster_site", "worker", "-l", "WARNING", "-P", "prefork",
             "-c", str(args.concurrency), "--without-mingle", "--without-gossip", "-n", "bench@%h"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # Ready once it has run a task (and its pool processes have their database connections).
        warm = NOOP10.launch()
        _wait(lambda: Run.objects.get(pk=warm.pk).status in RunStatus.terminal(), 60)
        return worker

    def stop_worker(worker: subprocess.Popen) -> None:
        worker.terminate()
        worker.wait(timeout=30)

    def engine_phase() -> tuple[float, int]:
        t0 = time.perf_counter()
        ids = [NOOP10.launch().pk for _ in range(args.runs)]
        _wait(
            lambda: Run.objects.filter(pk__in=ids, status__in=RunStatus.terminal()).count() == len(ids), 600
        )
        seconds = time.perf_counter() - t0
        failed = Run.objects.filter(pk__in=ids).exclude(status=RunStatus.SUCCEEDED).count()
        return seconds, failed

    worker = start_worker()
    try:
        raw_noop.delay()
        key = f"bench:{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        for _ in range(args.runs):
            chain(*[raw_noop.si() for _ in range(9)], raw_noop.si(key)).apply_async()
        _wait(lambda: int(r.get(key) or 0) >= args.runs, 300)
        raw_seconds = time.perf_counter() - t0
        engine_seconds, failed = engine_phase()
    finally:
        stop_worker(worker)
    nosync = None
    if not args.no_flush_phase:
        worker = start_worker(WORKFLOW_WAIT_FOR_FLUSH="0")
        try:
            nosync = engine_phase()
        finally:
            stop_worker(worker)
    log.close()

    raw_rate = steps / raw_seconds
    engine_rate = steps / engine_seconds
    print(f"worker: prefork x{args.concurrency}; {args.runs} chains/runs x 10 steps = {steps} steps each")
    print(f"raw Celery no-op tasks (chains of 10): {raw_rate:8.1f} tasks/s  ({raw_seconds:.2f}s)")
    print(f"workflow engine no-op steps:          {engine_rate:8.1f} steps/s  ({engine_seconds:.2f}s)")
    extra_ms = 1000 / engine_rate - 1000 / raw_rate
    print(f"engine / raw: {engine_rate / raw_rate:.2f}  ({extra_ms:.1f} ms extra per step)")
    print(f"runs not succeeded: {failed}")
    print("where the extra goes:")
    raw_tasks, engine_tasks = _totals(profiles[0])
    print("    in the worker, per step (sum over its processes; launch and end of each run included):")
    print(f"    {'':40s} {'wall ms':>8s} {'CPU ms':>7s} {'PostgreSQL ms':>14s} {'statements':>11s}")
    rows = [
        ("raw no-op task", raw_tasks.get("bench.raw_noop"), None),
        ("engine step", engine_tasks, 10 * (args.runs + 1)),
    ]
    if nosync is not None:
        rows.append(("engine step, WORKFLOW_WAIT_FOR_FLUSH=0", _totals(profiles[1])[1], 10 * (args.runs + 1)))
    for folder in profiles:
        shutil.rmtree(folder, ignore_errors=True)
    for label, totals, count in rows:
        if not totals:
            continue
        n = count or totals["messages"]
        print(
            f"    {label:40s} {totals['wall_seconds'] / n * 1000:8.2f} {totals['cpu_seconds'] / n * 1000:7.2f} "
            f"{totals['db_seconds'] / n * 1000:14.2f} {totals['statements'] / n:11.1f}"
        )
    if nosync is not None:
        rate = steps / nosync[0]
        print(
            f"    engine with WORKFLOW_WAIT_FOR_FLUSH=0: {rate:8.1f} steps/s, engine / raw {rate / raw_rate:.2f} "
            f"({1000 / rate - 1000 / raw_rate:.1f} ms extra per step; runs not succeeded: {nosync[1]})"
        )
        print(
            f"    so waiting for the WAL flush costs {1000 / engine_rate - 1000 / rate:.1f} ms per step here"
        )
    flushed, unflushed = _commit_cost()
    print(
        f"    one committed UPDATE from this process: {flushed:.2f} ms flushed, {unflushed:.2f} ms without waiting "
        f"for the flush (median of 200 each; {args.concurrency} workers share the disk)"
    )
    Run.objects.filter(kind="bench.noop10").delete()


def _totals(folder: str) -> tuple[dict, dict]:
    """The worker processes' totals (``benchmarks/noop_workflow.py``): per task name, and the engine's tasks
    (``core.execute_step`` and whatever else the engine sent) added up."""
    by_name: dict[str, dict[str, float]] = {}
    for path in Path(folder).glob("*.json"):
        for name, values in json.loads(path.read_text()).items():
            into = by_name.setdefault(name, dict.fromkeys(values, 0))
            for key, value in values.items():
                into[key] += value
    engine: dict[str, float] = {}
    for name, values in by_name.items():
        if name.startswith("core."):
            for key, value in values.items():
                engine[key] = engine.get(key, 0) + value
    return by_name, engine


def _commit_cost(rounds: int = 200) -> tuple[float, float]:
    """Median ms of an autocommitted one-row UPDATE, with and without waiting for the WAL flush."""
    import statistics

    from django.db import connection

    results = []
    with connection.cursor() as cursor:
        # A logged table: a temporary one writes no WAL, so its commits would not wait for a flush.
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit (id int PRIMARY KEY, n int)")
        cursor.execute("INSERT INTO bench_commit VALUES (1, 0) ON CONFLICT DO NOTHING")
        for mode in ("on", "off"):
            cursor.execute(f"SET synchronous_commit = {mode}")
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                cursor.execute("UPDATE bench_commit SET n = n + 1 WHERE id = 1")
                times.append((time.perf_counter() - started) * 1000)
            results.append(statistics.median(times))
        cursor.execute("RESET synchronous_commit")
        cursor.execute("DROP TABLE bench_commit")
    return results[0], results[1]


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
