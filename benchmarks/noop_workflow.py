"""A 10-step no-op workflow and a raw no-op Celery task, for ``benchmarks/workflow_overhead.py``.

Imported by the benchmark's worker through ``WORKFLOW_EXTRA_MODULES``.
"""

from __future__ import annotations

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
