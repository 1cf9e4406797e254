"""Celery tasks of the deployments app: thin wrappers around the app's service functions."""

from __future__ import annotations

from celery import shared_task

from . import health


@shared_task(name="deployments.check_deployments", acks_late=True)
def check_deployments() -> dict:
    """The deployment health beat (every 3 minutes by default, editable under Periodic tasks)."""
    return health.sweep()
