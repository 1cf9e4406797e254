"""Retention of the audit log: entries older than ``AUDIT_RETENTION_DAYS`` are deleted by a beat task."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from core.conf import setting

from .models import AuditEntry

# Rows per DELETE: a year of a busy log goes in short statements, none holding locks long or growing the WAL at once.
BATCH_SIZE = 5000


def retention_days() -> int:
    return int(setting("AUDIT_RETENTION_DAYS", 365) or 0)


def purge_expired(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> int:
    """Delete entries older than the retention period (none when it is 0: kept forever); returns how many."""
    days = retention_days()
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(
            AuditEntry.objects.filter(time__lt=cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        count, _ = AuditEntry.objects.filter(id__in=ids).delete()
        deleted += count
        if len(ids) < batch_size:
            return deleted
