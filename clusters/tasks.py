"""Celery tasks of the clusters app: thin wrappers around ``clusters.services``."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="clusters.check_clusters", acks_late=True)
def check_clusters() -> dict:
    """The periodic health sweep (beat, every 60 s by default)."""
    return services.sweep().as_dict()
