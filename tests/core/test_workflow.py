"""The workflow engine on a real Celery worker and Redis."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from core import workflow
from core.choices import RunStatus, StepStatus
from core.models import Run, RunEvent, RunStep
from core.tasks import execute_step
from tests.worker import armed_worker, broker_drained, kill_worker_during_step, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _finished(run: Run, timeout: float = 40.0) -> Run:
    def done():
        run.refresh_from_db()
        return run.status in RunStatus.terminal()

    wait_for(done, timeout=timeout, what=f"run {run.kind} to finish (status {run.status})")
    return run


def _bodies(run: Run, step: str) -> int:
    return RunEvent.objects.filter(run=run, step=step, message="body executed").count()


def _steps(run: Run) -> dict[str, str]:
    return dict(run.steps.values_list("name", "status"))


def test_chain_completes_with_events_and_progress(worker):
    run = workflow.get_workflow("demo.chain").launch(params={})
    assert run.status == RunStatus.PENDING
    _finished(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.progress == 100.0
    assert _steps(run) == {
        "first": StepStatus.SUCCEEDED,
        "second": StepStatus.SUCCEEDED,
        "third": StepStatus.SUCCEEDED,
        "undo": StepStatus.SKIPPED,
    }
    messages = list(run.events.values_list("message", flat=True))
    # Steps ran in order, each reported start and end.
    starts = [m for m in messages if m.endswith(": started") and m != "Demo chain: started"]
    assert starts == ["First step: started", "Second step: started", "Third step: started"]
    assert messages[-1] == "Demo chain: succeeded"
    # The run's start is logged once, before its first step's (one statement writes both: core.workflow._claim_first).
    assert messages.count("Demo chain: started") == messages.count("First step: started") == 1
    assert messages.index("Demo chain: started") < messages.index("First step: started")
    assert run.started_at and run.finished_at and run.finished_at >= run.started_at
    assert run.eta is not None and run.eta <= run.finished_at
    # The short steps ran one after the other in the first step's message, not once each through the queue.
    carried_by = {e.step: e.data["task_id"] for e in run.events.filter(message="body executed")}
    assert set(carried_by) == {"first", "second", "third"}
    assert len(set(carried_by.values())) == 1, carried_by


class _Request:
    def __init__(self, chain):
        self.chain = chain


class _Task:
    def __init__(self, chain):
        self.request = _Request(chain)


def _msg(run_id: str, step: str) -> dict:
    return {"task": "core.execute_step", "args": [run_id, step], "options": {}}


def test_inline_continuation_takes_only_the_same_runs_next_step(settings):
    settings.WORKFLOW_INLINE_SECONDS = 5
    chain = [_msg("r1", "third"), _msg("r1", "second")]  # Celery keeps the next message last
    task = _Task(chain)
    now = time.monotonic()
    assert workflow._take_inline(task, "r1", "demo.chain", now) == "second"
    assert chain == [_msg("r1", "third")]
    # Another run's message, a spent time budget, a fan-out step, or no chain: the broker carries it.
    assert workflow._take_inline(_Task([_msg("r2", "second")]), "r1", "demo.chain", now) is None
    assert workflow._take_inline(task, "r1", "demo.chain", now - 6) is None
    assert chain == [_msg("r1", "third")]
    assert workflow._take_inline(_Task([_msg("r1", "square")]), "r1", "demo.fanout", now) is None
    assert workflow._take_inline(_Task(None), "r1", "demo.chain", now) is None
    settings.WORKFLOW_INLINE_SECONDS = 0
    assert workflow._take_inline(task, "r1", "demo.chain", time.monotonic()) is None


def test_failure_runs_cleanup_and_reports_reason(worker):
    run = workflow.get_workflow("demo.chain").launch(params={"fail": True})
    _finished(run)
    assert run.status == RunStatus.FAILED
    assert "the demo was told to fail here" in run.error
    assert _steps(run) == {
        "first": StepStatus.SUCCEEDED,
        "second": StepStatus.FAILED,
        "third": StepStatus.SKIPPED,
        "undo": StepStatus.SUCCEEDED,
    }
    assert _bodies(run, "undo") == 1


def test_chord_fans_out_and_joins(worker):
    run = workflow.get_workflow("demo.fanout").launch(params={"n": 6})
    _finished(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    square = run.steps.get(name="square")
    assert square.output["sum"] == sum(i * i for i in range(1, 7))
    assert run.steps.get(name="report").output == {"sum_seen": 91}


def test_duplicate_delivery_runs_each_body_once(worker):
    run = workflow.get_workflow("demo.chain").launch(params={})
    # The same messages again, as a broker redelivery would send them, while the chain is in flight.
    for name in ("first", "second", "third"):
        execute_step.apply_async((str(run.pk), name))
        execute_step.apply_async((str(run.pk), name))
    _finished(run)
    assert run.status == RunStatus.SUCCEEDED
    wait_for(broker_drained, what="the worker to handle every duplicate")
    for name in ("first", "second", "third"):
        assert _bodies(run, name) == 1, name
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_cancel_stops_at_next_step_boundary_and_runs_cleanup(worker):
    with armed_worker(worker, ["demo.slow/work:pause"], name="boundary"):
        run = workflow.get_workflow("demo.slow").launch(params={"sleep": 0})
        wait_for(lambda: workflow.failpoint_reached(run.pk, "work"), what="work to be under way")
        assert workflow.request_cancel(Run.objects.get(pk=run.pk))
        workflow.release_failpoint(run.pk, "work")
        _finished(run)
    assert run.status == RunStatus.CANCELLED
    statuses = _steps(run)
    assert statuses["work"] == StepStatus.SUCCEEDED  # not cooperative: it finishes its own work
    assert statuses["after"] == StepStatus.CANCELLED  # stopped at the boundary
    assert statuses["undo"] == StepStatus.SUCCEEDED
    assert _bodies(run, "after") == 0


def test_cooperative_cancel_interrupts_a_long_step(worker):
    run = workflow.get_workflow("demo.slow").launch(params={"sleep": 30.0, "cooperative": True})
    wait_for(lambda: run.steps.filter(name="work", status=StepStatus.RUNNING).exists(), what="work to start")
    workflow.request_cancel(Run.objects.get(pk=run.pk))
    _finished(run, timeout=15)
    assert run.status == RunStatus.CANCELLED
    assert _steps(run)["work"] == StepStatus.CANCELLED


def test_wait_step_polls_until_condition(worker, tmp_path):
    path = tmp_path / "ready.flag"
    run = workflow.get_workflow("demo.wait").launch(params={"path": str(path), "timeout": 20})
    wait_for(lambda: run.steps.filter(name="wait_file", status=StepStatus.WAITING).exists(), what="waiting")
    path.write_text("go")
    _finished(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.steps.get(name="wait_file").output == {"found": str(path)}


def test_wait_step_times_out_with_clear_error(worker, tmp_path):
    run = workflow.get_workflow("demo.wait").launch(params={"path": str(tmp_path / "never"), "timeout": 1.5})
    _finished(run)
    assert run.status == RunStatus.FAILED
    assert "timed out after" in run.error
    assert "waiting for the demo file" in run.error
    assert "never not there yet" in run.error
    assert _steps(run)["undo"] == StepStatus.SUCCEEDED


def test_cancel_while_waiting_is_immediate(worker, tmp_path):
    run = workflow.get_workflow("demo.wait").launch(params={"path": str(tmp_path / "never"), "timeout": 60})
    wait_for(lambda: run.steps.filter(name="wait_file", status=StepStatus.WAITING).exists(), what="waiting")
    workflow.request_cancel(Run.objects.get(pk=run.pk))
    _finished(run, timeout=10)
    assert run.status == RunStatus.CANCELLED
    assert _steps(run)["wait_file"] == StepStatus.CANCELLED


def test_worker_killed_mid_step_run_finishes_after_new_worker(worker):
    # The worker dies after the body ran, before the step's success is recorded: the reaper resumes the run
    # once the step is silent for WORKFLOW_STALE_AFTER, and the body runs again (bodies are idempotent).
    _, run = kill_worker_during_step(
        worker,
        lambda: (None, workflow.get_workflow("demo.slow").launch(params={"sleep": 0.1}).pk),
        "work",
        name="demo",
        extra_env={},
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.steps.get(name="work").attempt == 2
    assert _bodies(run, "work") == 2
    assert _bodies(run, "after") == 1
    assert run.events.filter(status="resumed").exists()


def test_reaper_never_resumes_a_step_whose_worker_is_alive(worker, settings):
    """A step held far longer than the stale window, its heartbeat beating: every reaper pass leaves it alone."""
    stale = settings.WORKFLOW_STALE_AFTER
    with armed_worker(worker, ["demo.slow/work:pause"], name="alive"):
        run = workflow.get_workflow("demo.slow").launch(params={"sleep": 0})
        wait_for(lambda: workflow.failpoint_reached(run.pk, "work"), what="work to be under way")
        started = RunStep.objects.get(run=run, name="work").started_at
        passes = 0

        def reaped_past_two_windows() -> bool:
            nonlocal passes
            assert str(run.pk) not in workflow.reap_stale_runs()
            passes += 1
            return (timezone.now() - started).total_seconds() > 2 * stale

        wait_for(reaped_past_two_windows, timeout=4 * stale + 30, interval=0.25, what="two stale windows")
        workflow.release_failpoint(run.pk, "work")
        _finished(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.resumed_count == 0 and passes > 10
    assert run.steps.get(name="work").attempt == 1
    assert _bodies(run, "work") == 1


def test_cancel_of_a_pending_run_still_runs_its_cleanup(worker):
    worker.stop()  # nobody takes the run: it stays pending
    try:
        run = workflow.get_workflow("demo.chain").launch(params={})
        assert workflow.request_cancel(Run.objects.get(pk=run.pk))
        run.refresh_from_db()
        assert run.status == RunStatus.CLEANING_UP and run.cancel_requested
    finally:
        worker.start()
    _finished(run)
    assert run.status == RunStatus.CANCELLED
    assert _steps(run) == {
        "first": StepStatus.SKIPPED,
        "second": StepStatus.SKIPPED,
        "third": StepStatus.SKIPPED,
        "undo": StepStatus.SUCCEEDED,
    }
    assert _bodies(run, "first") == 0 and _bodies(run, "undo") == 1
    # The original chain's message arrives after the cancel and finds nothing to do.
    assert not workflow.request_cancel(Run.objects.get(pk=run.pk))


def test_heartbeat_outlives_a_database_error(transactional_db, settings, monkeypatch):
    """A failed heartbeat write (a database blip) must not stop the heartbeat: a silent live step would be
    taken over by the reaper."""
    settings.WORKFLOW_HEARTBEAT_INTERVAL = 0.02
    run = Run.objects.create(kind="demo.slow", status=RunStatus.RUNNING)
    step = RunStep.objects.create(run=run, order=0, name="work", title="Work", status=StepStatus.RUNNING)
    real_now, calls = timezone.now, []

    class FlakyClock:
        @staticmethod
        def now():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("connection to the database lost")
            return real_now()

    monkeypatch.setattr(workflow, "timezone", FlakyClock)
    with workflow._Heartbeat(run.pk, step.pk):
        wait_for(
            lambda: RunStep.objects.get(pk=step.pk).heartbeat_at is not None,
            timeout=10,
            what="a heartbeat after the failed one",
        )


def test_heartbeat_slower_than_half_the_stale_window_is_refused(settings):
    from core.checks import workflow_liveness

    settings.WORKFLOW_HEARTBEAT_INTERVAL, settings.WORKFLOW_STALE_AFTER = 50, 90
    (error,) = workflow_liveness()
    assert error.id == "core.E001"
    assert "less than half of WORKFLOW_STALE_AFTER (90s)" in error.msg
    settings.WORKFLOW_HEARTBEAT_INTERVAL = 10
    assert workflow_liveness() == []
