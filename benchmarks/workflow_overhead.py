"""Workflow engine overhead: steps/s of a 10-step no-op workflow beside raw Celery no-op tasks/s.

Both are measured in the same run, on the same worker (a real `celery worker` subprocess, prefork, 2 processes),
broker (Redis) and database (PostgreSQL):
  * raw: N plain Celery chains of 10 no-op tasks (`bench.raw_noop`), results ignored;
  * engine: N runs of `bench.noop10` (each step: claim by compare-and-set, events, progress/ETA, chain on).
The ratio engine/raw is the figure: what the durability (DB truth, idempotent entry, events) costs per step.

Usage: python benchmarks/workflow_overhead.py [--runs 50] [--concurrency 2]
(DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/budcluster_bench, CELERY_BROKER_URL to Redis db 13.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
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
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "budcluster_site", "worker", "-l", "WARNING", "-P", "prefork",
         "-c", str(args.concurrency), "--without-mingle", "--without-gossip", "-n", "bench@%h"],
        cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(4)  # worker start
        steps = 10 * args.runs

        # warm-up both paths
        raw_noop.delay()
        warm = NOOP10.launch()
        _wait(lambda: Run.objects.get(pk=warm.pk).status in RunStatus.terminal(), 60)

        key = f"bench:{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        for _ in range(args.runs):
            chain(*[raw_noop.si() for _ in range(9)], raw_noop.si(key)).apply_async()
        _wait(lambda: int(r.get(key) or 0) >= args.runs, 300)
        raw_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        ids = [NOOP10.launch().pk for _ in range(args.runs)]
        _wait(
            lambda: Run.objects.filter(pk__in=ids, status__in=RunStatus.terminal()).count() == len(ids), 600
        )
        engine_seconds = time.perf_counter() - t0
        failed = Run.objects.filter(pk__in=ids).exclude(status=RunStatus.SUCCEEDED).count()

        raw_rate = steps / raw_seconds
        engine_rate = steps / engine_seconds
        print(f"worker: prefork x{args.concurrency}; {args.runs} chains/runs x 10 steps = {steps} steps each")
        print(f"raw Celery no-op tasks (chains of 10): {raw_rate:8.1f} tasks/s  ({raw_seconds:.2f}s)")
        print(f"workflow engine no-op steps:          {engine_rate:8.1f} steps/s  ({engine_seconds:.2f}s)")
        extra_ms = 1000 / engine_rate - 1000 / raw_rate
        print(f"engine / raw: {engine_rate / raw_rate:.2f}  ({extra_ms:.1f} ms extra per step)")
        print(f"runs not succeeded: {failed}")
        Run.objects.filter(kind="bench.noop10").delete()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
