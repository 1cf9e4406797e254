"""Celery tasks of the deployments app: thin wrappers around the app's service functions."""

from __future__ import annotations

from celery import shared_task

from . import autoscaling, health, workflows


@shared_task(name="deployments.check_deployments", acks_late=True)
def check_deployments() -> dict:
    """The deployment health beat (every 3 minutes by default, editable under Periodic tasks)."""
    return health.sweep()


@shared_task(name="deployments.finish_pending_cleanups", acks_late=True)
def finish_pending_cleanups() -> list[int]:
    """Remove what failed deploys left on clusters that were unreachable then and are available now (every
    minute by default, editable under Periodic tasks)."""
    return workflows.finish_pending_cleanups()


@shared_task(name="deployments.autoscale", acks_late=True)
def autoscale() -> dict:
    """The autoscaling beat (every 15 seconds by default, editable under Periodic tasks): evaluate every
    deployment's autoscaling policy and scale through the update run when due."""
    return autoscaling.evaluate_all()
