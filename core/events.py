"""Writing events (in the caller's transaction) and reading them in a stable order.

Writers call :func:`emit` (or :func:`emit_many` for a batch) inside the transaction that makes the change: the
row commits or rolls back with it (transactional outbox). The commit then sends ``core.signals.events_committed``
once; the webhooks app wakes its dispatcher on it (when a subscription is enabled), so the state change never
waits for a receiver.

Readers page by ``position`` (see ``core.models.Event``): :func:`position_pending` numbers the rows committed since
the last call, one positioner at a time (a transaction-scoped advisory lock on PostgreSQL; SQLite has one writer
anyway), in one UPDATE, counting on from ``EventCounter`` (positions never go back, even when retention deleted
every event).

Event types (CloudEvents ``type``; ``subject`` names the object, ``data`` holds the details):

==========================================  ========================  ============================================
type                                        subject                   data
==========================================  ========================  ============================================
io.bud.cluster.status.changed               clusters/<id>             cluster, name, old_status, new_status, reason
io.bud.cluster.inventory.changed            clusters/<id>             nodes, added, removed, changed, gpus,
                                                                      gpus_free, previous counts
io.bud.deployment.status.changed            deployments/<id>          deployment, name, cluster, old_status,
                                                                      new_status, reason
io.bud.deployment.autoscaled                deployments/<id>          decision, replicas, metric values
io.bud.deployment.worker.changed            deployments/<id>          worker, node, old_phase, phase, ready,
                                                                      restarts, reason
io.bud.run.queued / started / progress      runs/<uuid>               run, kind, title, subject_type, subject_id,
io.bud.run.succeeded / failed / cancelled                             status, step, progress, message
io.bud.benchmark.finished                   benchmarks/<id>           benchmark, deployment, status, summary
io.bud.provisioning.awaiting_approval       provisionings/<id>        provisioning, run, plan summary
io.bud.webhook.subscription.disabled        webhooks/<id>             subscription, reason, failures
==========================================  ========================  ============================================
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from .models import Event
from .signals import events_committed

SOURCE = "/budcluster"
TYPE_PREFIX = "io.bud."


def emit(event_type: str, subject: str, data: dict[str, Any] | None = None, *, source: str = SOURCE) -> Event:
    """Write one event in the current transaction (``event_type`` without the ``io.bud.`` prefix is completed)."""
    event = Event.objects.create(type=_full_type(event_type), subject=subject, data=data or {}, source=source)
    _wake_on_commit()
    return event


def emit_many(events: Iterable[tuple[str, str, dict[str, Any]]], *, source: str = SOURCE) -> int:
    """Write a batch of (type, subject, data) in the current transaction with one INSERT per 500 rows."""
    rows = [Event(type=_full_type(t), subject=s, data=d or {}, source=source) for t, s, d in events]
    if rows:
        Event.objects.bulk_create(rows, batch_size=500)
        _wake_on_commit()
    return len(rows)


# An event type as filters name it: lower-case dotted words, or a prefix ending in ".*".
TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(\.\*)?$")


def check_types(types: Iterable[str]) -> list[str]:
    """Type filters cleaned (stripped, deduplicated), or ValueError naming those that are no event type."""
    cleaned = [t.strip() for t in types if t.strip()]
    bad = [t for t in cleaned if not TYPE_RE.match(t)]
    if bad:
        raise ValueError(
            f"not an event type: {', '.join(bad)} (e.g. io.bud.cluster.status.changed or io.bud.run.*)"
        )
    return list(dict.fromkeys(cleaned))


def insert_sql(
    event_type: str, subject: str, data: dict[str, Any] | None = None, *, source: str = SOURCE
) -> tuple[str, list[Any]]:
    """One event as ``INSERT INTO core_event (...) SELECT <values>`` and its parameters, for a writer that puts
    it into the very statement that makes the change (PostgreSQL: a data-modifying CTE, ``... FROM changed``
    appended by the caller), so that the event is written exactly when the change is, in one round trip.

    The caller calls :func:`wake_on_commit` once the statement wrote the row."""
    columns = ", ".join(
        connection.ops.quote_name(c) for c in ("id", "type", "source", "subject", "time", "data")
    )
    values = [
        uuid.uuid4(),
        _full_type(event_type),
        source,
        subject,
        timezone.now(),
        Event._meta.get_field("data").get_db_prep_value(data or {}, connection),
    ]
    return f"INSERT INTO {Event._meta.db_table} ({columns}) SELECT %s, %s, %s, %s, %s, %s", values


def _full_type(event_type: str) -> str:
    return event_type if event_type.startswith(TYPE_PREFIX) else TYPE_PREFIX + event_type


def _wake_on_commit() -> None:
    # One signal per transaction however many events it wrote: Django keeps the pending commit hooks on the
    # connection, so look there before adding another.
    if any(getattr(hook, "__func__", hook) is _committed for _sids, hook, *_ in connection.run_on_commit):
        return
    transaction.on_commit(_committed, robust=True)


# For writers of raw rows (``insert_sql``): the same one signal per transaction, sent when it commits (at once in
# autocommit mode, where the statement has committed already).
wake_on_commit = _wake_on_commit


def _committed() -> None:
    events_committed.send(sender=Event)


# --- reading ----------------------------------------------------------------------------------------------------

# The base is the larger of the counter and the highest position present: the counter keeps positions from going
# back once retention deleted every event; the maximum covers a counter row lost to a database flush (tests).
_TOP_SQL = """
SELECT COALESCE((SELECT last FROM core_eventcounter WHERE id = 1), 0),
       COALESCE((SELECT MAX(position) FROM core_event), 0)
"""
_POSITION_SQL = """
WITH pending AS (
    SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) AS rn FROM core_event WHERE position IS NULL
)
UPDATE core_event SET position = %s + pending.rn
FROM pending
WHERE core_event.seq = pending.seq
"""
_COUNTER_SQL = """
INSERT INTO core_eventcounter (id, last) VALUES (1, %s)
ON CONFLICT (id) DO UPDATE SET last = excluded.last
"""
# Any constant shared by every positioner; 0x6275640065767473 spells "bud\0evts".
_POSITION_LOCK = 0x6275640065767473


def position_pending() -> int:
    """Give positions to every committed event that has none yet; returns how many were numbered."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_POSITION_LOCK])
        cursor.execute(_TOP_SQL)
        top = max(cursor.fetchone())
        cursor.execute(_POSITION_SQL, [top])
        numbered = cursor.rowcount
        if numbered:
            cursor.execute(_COUNTER_SQL, [top + numbered])
        return numbered


def page(
    *,
    after: int = 0,
    limit: int = 100,
    types: list[str] | None = None,
    subject: str = "",
) -> tuple[list[Event], int]:
    """Events after the cursor ``after`` (a position), oldest first, and the cursor to ask with next time.

    The next cursor moves past the last position looked at even when filters left it out, so a filtered
    reader still never sees the same event twice; it stays at ``after`` when nothing new was committed."""
    position_pending()
    # The newest position first: events numbered after this read belong to the next page, never skipped.
    top = (
        Event.objects.filter(position__isnull=False)
        .order_by("-position")
        .values_list("position", flat=True)
        .first()
        or 0
    )
    qs = Event.objects.filter(position__gt=after, position__lte=top).order_by("position")
    if subject:
        qs = qs.filter(subject=subject)
    if types:
        qs = qs.filter(type_filter(types))
    events = list(qs[:limit])
    if len(events) == limit:
        return events, events[-1].position
    # Fewer than a page: everything up to ``top`` was looked at.
    return events, max(after, top)


def type_filter(types: list[str]):
    """``type`` in the list, where an entry ending in ``.*`` matches a prefix."""
    from django.db.models import Q

    cond = Q(type__in=[t for t in types if not t.endswith(".*")])
    for prefix in (t[:-1] for t in types if t.endswith(".*")):
        cond |= Q(type__startswith=prefix)
    return cond
