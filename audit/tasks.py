"""Beat task of the audit log: thin; the rule is in ``audit.services``."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="audit.purge_expired", acks_late=True)
def purge_expired() -> int:
    return services.purge_expired()
