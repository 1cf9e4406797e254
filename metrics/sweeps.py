"""Time the periodic health sweeps in the worker that runs them, into ``SweepTiming``.

Celery's ``task_prerun`` / ``task_postrun`` signals fire in the process that runs the task, so the start time is
kept in a dict of that process keyed by task id. The sweep tasks themselves are left as they are: timing them is
this app's concern. A failure to record is logged and never fails the sweep.
"""

from __future__ import annotations

import logging
import time

from celery import signals
from django.db.models import F
from django.utils import timezone

logger = logging.getLogger(__name__)

# Celery task name -> the ``sweep`` label of budcluster_health_sweep_duration_seconds.
SWEEP_TASKS = {
    "clusters.check_clusters": "clusters",
    "deployments.check_deployments": "deployments",
}

_started: dict[str, float] = {}


def record(sweep: str, seconds: float) -> None:
    """Add one sweep of ``seconds`` to the running totals (atomic increments: workers may finish at once)."""
    from .models import SweepTiming

    values = {
        "count": F("count") + 1,
        "sum_seconds": F("sum_seconds") + seconds,
        "last_seconds": seconds,
        "last_finished_at": timezone.now(),
    }
    if not SweepTiming.objects.filter(sweep=sweep).update(**values):
        SweepTiming.objects.bulk_create([SweepTiming(sweep=sweep)], ignore_conflicts=True)
        SweepTiming.objects.filter(sweep=sweep).update(**values)


def _task_name(task) -> str:
    return getattr(task, "name", "") or ""


def _on_prerun(task_id=None, task=None, **kwargs) -> None:
    if _task_name(task) in SWEEP_TASKS and task_id:
        _started[task_id] = time.monotonic()


def _on_postrun(task_id=None, task=None, **kwargs) -> None:
    started = _started.pop(task_id, None) if task_id else None
    sweep = SWEEP_TASKS.get(_task_name(task))
    if started is None or sweep is None:
        return
    try:
        record(sweep, time.monotonic() - started)
    except Exception:  # a metrics write must never turn a finished sweep into a failed task
        logger.exception("could not record the duration of the %s health sweep", sweep)


def connect() -> None:
    """Connect the handlers once (``dispatch_uid``: ``ready()`` may run more than once in tests)."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="metrics.sweeps.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="metrics.sweeps.postrun")
