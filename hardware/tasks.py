"""Celery tasks of the hardware app (thin: call the service, log the outcome)."""

from __future__ import annotations

import logging

from celery import shared_task

from . import services

logger = logging.getLogger(__name__)


@shared_task(name="hardware.refresh_all", acks_late=True)
def refresh_all() -> dict:
    """Periodic inventory refresh (beat, every 10 min by default) of every available cluster, in parallel."""
    result = services.refresh_available()
    failed = result["failed"]
    if failed:
        logger.warning("inventory refresh failed for %d cluster(s): %s", len(failed), failed)
    return result
