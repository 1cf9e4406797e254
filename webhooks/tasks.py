"""Celery tasks of the webhooks (logic in ``services.services``). They run on the poll queue
(``WORKFLOW_POLL_QUEUE``, see settings' ``CELERY_TASK_ROUTES``): short calls bounded by ``WEBHOOK_TIMEOUT`` that
must never hold the workers of the workflow steps behind a slow receiver."""

from __future__ import annotations

from celery import shared_task

from . import services

# acks_late + reject_on_worker_lost: a worker killed mid-delivery gives its message back. The lease still stops a
# second POST while the first may be in flight; the sweep resends the line once the lease has run out.
_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


@shared_task(name="webhooks.dispatch", **_OPTIONS)
def dispatch() -> int:
    return services.dispatch()


@shared_task(name="webhooks.deliver", **_OPTIONS)
def deliver(subscription_id: int, subject: str) -> int:
    return services.deliver_line(subscription_id, subject)


@shared_task(name="webhooks.sweep", **_OPTIONS)
def sweep() -> dict:
    return services.sweep()


@shared_task(name="webhooks.cleanup", **_OPTIONS)
def cleanup() -> dict:
    return services.cleanup()
