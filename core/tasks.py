"""Celery tasks of the workflow engine: thin wrappers; the logic is in ``core.workflow``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from . import workflow

_STEP_OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": None}
# The database (Run/RunStep/RunEvent) is the truth, so step tasks keep no Celery result of their own; only
# fan-out items do, because the chord hands their results to the join.
_NO_RESULT = {"ignore_result": True, "track_started": False}


@shared_task(name="core.execute_step", **_STEP_OPTIONS, **_NO_RESULT)
def execute_step(self, run_id: str, step_name: str) -> Any:
    return workflow.execute_step(self, run_id, step_name)


@shared_task(name="core.check_step", **_STEP_OPTIONS, **_NO_RESULT)
def check_step(self, run_id: str, step_name: str) -> Any:
    """``execute_step`` for a poll step's checks: the same body under its own name, so that ``CELERY_TASK_ROUTES``
    sends them to ``WORKFLOW_POLL_QUEUE`` (``core.workflow.step_task``)."""
    return workflow.execute_step(self, run_id, step_name)


@shared_task(name="core.execute_fanout_item", **_STEP_OPTIONS)
def execute_fanout_item(self, run_id: str, step_name: str, index: int) -> dict:
    return workflow.execute_fanout_item(run_id, step_name, index)


@shared_task(name="core.join_fanout", **_STEP_OPTIONS, **_NO_RESULT)
def join_fanout(self, results: list[dict], run_id: str, step_name: str) -> Any:
    return workflow.finish_fanout(self, run_id, step_name, results)


@shared_task(name="core.reap_stale_runs", acks_late=True)
def reap_stale_runs() -> list[str]:
    return workflow.reap_stale_runs()
