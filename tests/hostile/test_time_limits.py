"""Celery time limits: a step that runs past the task soft time limit fails with a message naming the limit, and
the run's cleanup runs (a hung step never holds a worker slot for ever)."""

from __future__ import annotations

import pytest

from core import workflow
from core.choices import RunStatus, StepStatus
from tests.conftest import WORKER_ENV
from tests.worker import WorkerProcess, run_finished

pytestmark = pytest.mark.django_db(transaction=True)


def test_time_limits_are_configured_for_every_task():
    from budcluster_site.celery import app

    assert app.conf.task_soft_time_limit > 0
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit


def test_a_step_past_the_soft_time_limit_fails_clearly_and_cleans_up(celery_worker_process):
    # The only consumer is a worker with a 1 s soft limit (the session worker stops meanwhile).
    celery_worker_process.stop()
    limited = WorkerProcess(
        name="soft-limit",
        extra_env={**WORKER_ENV, "CELERY_TASK_SOFT_TIME_LIMIT": "1", "CELERY_TASK_TIME_LIMIT": "60"},
    )
    try:
        limited.start()
        run = workflow.get_workflow("demo.slow").launch(params={"sleep": 300})
        run = run_finished(run.pk, timeout=60)
    finally:
        limited.stop()
        celery_worker_process.start()
    assert run.status == RunStatus.FAILED
    work = run.steps.get(name="work")
    assert work.status == StepStatus.FAILED
    assert "soft time limit of 1 s (CELERY_TASK_SOFT_TIME_LIMIT)" in work.message
    assert "SoftTimeLimitExceeded(" not in work.message  # the words, not billiard's repr
    assert "soft time limit of 1 s" in run.error
    assert run.steps.get(name="after").status != StepStatus.SUCCEEDED
    assert run.steps.get(name="undo").status == StepStatus.SUCCEEDED  # cleanup ran
