"""Demonstration workflows that exercise the engine in tests (not shipped as features).

Each body records ``body executed`` events so tests can count how often a step body really ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from celery.signals import task_prerun

from core.workflow import NotYet, Poll, Step, StepContext, StepFailed, Workflow


@task_prerun.connect
def _fresh_content_types(**kwargs) -> None:
    """Test workers outlive the database flushes between transactional tests, which recreate the content type
    rows with new ids; forget the cached ones before each task (a run launched from a worker, e.g. provisioning's
    registration, would otherwise point at a row that no longer exists). Every test worker imports this module
    (WORKFLOW_EXTRA_MODULES), production workers do not need it."""
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()


def _record(ctx: StepContext, **data) -> dict:
    from celery import current_task

    task_id = current_task.request.id if current_task else ""
    ctx.event("body executed", attempt=ctx.step.attempt, task_id=task_id, **data)
    return {"step": ctx.step.name, "attempt": ctx.step.attempt}


def _sleepy(ctx: StepContext) -> dict:
    """Sleep ``params.sleep`` seconds in small slices, reporting progress; honour cancel if asked to."""
    total = float(ctx.params.get("sleep", 1.0))
    _record(ctx)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < total:
        if ctx.params.get("cooperative"):
            ctx.check_cancel()
        ctx.progress(elapsed / total, f"{elapsed:.1f}s of {total:.1f}s")
        time.sleep(0.05)
    return {"slept": total}


def _fail_if_asked(ctx: StepContext) -> dict:
    if ctx.params.get("fail"):
        raise StepFailed("the demo was told to fail here")
    return _record(ctx)


def _cleanup(ctx: StepContext) -> dict:
    return _record(ctx, cleanup=True)


def _wait_for_file(ctx: StepContext):
    path = Path(ctx.params["path"])
    if path.exists():
        return {"found": str(path)}
    return NotYet(f"{path.name} not there yet")


CHAIN = Workflow(
    kind="demo.chain",
    title="Demo chain",
    steps=[
        Step("first", "First step", _record, eta=1),
        Step("second", "Second step", _fail_if_asked, eta=1),
        Step("third", "Third step", _record, eta=2),
    ],
    cleanup=[Step("undo", "Undo what was done", _cleanup)],
)

FANOUT = Workflow(
    kind="demo.fanout",
    title="Demo fan-out",
    steps=[
        Step("prepare", "Prepare", _record),
        Step(
            "square",
            "Square every number",
            lambda ctx: list(range(1, int(ctx.params.get("n", 5)) + 1)),
            each=lambda ctx, item: item * item,
            join=lambda ctx, results: {"sum": sum(results)},
        ),
        Step("report", "Report", lambda ctx: {"sum_seen": ctx.outputs["square"]["sum"]}),
    ],
)

SLOW = Workflow(
    kind="demo.slow",
    title="Demo slow work",
    steps=[
        Step("work", "Long work", _sleepy, eta=5),
        Step("after", "After the work", _record, eta=1),
    ],
    cleanup=[Step("undo", "Undo the work", _cleanup)],
)

WAIT = Workflow(
    kind="demo.wait",
    title="Demo wait",
    steps=[
        Step(
            "wait_file",
            "Wait for the file",
            _wait_for_file,
            poll=Poll(
                interval=0.3, timeout=lambda ctx: float(ctx.params.get("timeout", 5)), what="the demo file"
            ),
        ),
        Step("after", "After the wait", _record),
    ],
    cleanup=[Step("undo", "Undo", _cleanup)],
)
