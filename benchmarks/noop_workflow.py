"""A 10-step no-op workflow and a raw no-op Celery task, for ``benchmarks/workflow_overhead.py``.

Imported by the benchmark's worker through ``WORKFLOW_EXTRA_MODULES``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import shared_task

from core.workflow import Step, Workflow


def _noop(ctx) -> None:
    return None


NOOP10 = Workflow(
    kind="bench.noop10",
    title="Ten no-op steps",
    steps=[Step(f"s{i}", f"No-op {i}", _noop, eta=1) for i in range(10)],
)


@shared_task(name="bench.raw_noop", ignore_result=True)
def raw_noop(counter_key: str | None = None) -> None:
    """The raw baseline: a Celery task that does nothing (the last of a chain bumps a Redis counter)."""
    if counter_key:
        import redis
        from django.conf import settings

        redis.Redis.from_url(settings.CELERY_BROKER_URL).incr(counter_key)


# --- where a task's time goes, in the worker (BENCH_PROFILE_DIR) ----------------------------------------------
# With BENCH_PROFILE_DIR set, each worker process adds up per task name: messages, wall and CPU time in the task,
# and time and statements in PostgreSQL (a Django execute wrapper: the statement's round trip, its commit
# included), and writes them to <dir>/<pid>.json when it exits. The benchmark sums them; a few microseconds per
# task and statement, the same for both paths.
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
_totals: dict[str, dict[str, float]] = {}
_current: dict[str, float] | None = None
_started: tuple[float, float] = (0.0, 0.0)


def _in_database(execute, sql, params, many, context):
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        if _current is not None:
            _current["db_seconds"] += time.perf_counter() - started
            _current["statements"] += 1


if PROFILE_DIR:
    from celery.signals import task_postrun, task_prerun, worker_process_shutdown
    from django.db import connection

    @task_prerun.connect
    def _task_started(task=None, **_kwargs) -> None:
        global _current, _started
        if _in_database not in connection.execute_wrappers:
            connection.execute_wrappers.append(_in_database)
        _current = _totals.setdefault(
            task.name,
            {"messages": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0, "db_seconds": 0.0, "statements": 0},
        )
        _started = (time.perf_counter(), time.process_time())

    @task_postrun.connect
    def _task_ended(**_kwargs) -> None:
        global _current
        if _current is not None:
            _current["messages"] += 1
            _current["wall_seconds"] += time.perf_counter() - _started[0]
            _current["cpu_seconds"] += time.process_time() - _started[1]
        _current = None

    @worker_process_shutdown.connect
    def _write_totals(**_kwargs) -> None:
        Path(PROFILE_DIR, f"{os.getpid()}.json").write_text(json.dumps(_totals))
