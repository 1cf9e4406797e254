"""Outages of what the service stands on (PostgreSQL, the Celery broker), told apart from bugs.

While the database or the broker is down a request cannot be served, but nothing is wrong with the request or the
code: the API answers **503** with ``Retry-After`` and a body naming the dependency
(``{"detail": "...", "code": "database_unavailable" | "broker_unavailable", "retry_after": 5}``), never a 500.
The mapping lives in :func:`unavailable_dependency`, used by the API's exception handler and by the 500 view
(``core.api.errors``).

Starting a run while the broker is down is refused before anything is stored (:func:`require_broker`, called by
``core.workflow.Workflow.launch``): the caller's transaction rolls back, so a 503 leaves no run and no subject row
behind. A broker that fails in the short window between that check and the send after commit leaves the run
PENDING; the workflow reaper sends it once the broker answers again (``WORKFLOW_STALE_AFTER``).
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError, OperationalError
from kombu.exceptions import OperationalError as KombuOperationalError

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying (the Retry-After header); outages we ride out last seconds to
# minutes, and the client's own backoff takes over after the first retry.
RETRY_AFTER_SECONDS = 5
# The broker check before a launch: a new connection (the pool may hold one to a broker that has since died),
# refused or unanswered within this many seconds.
BROKER_CHECK_TIMEOUT = 3.0

# Errors of the broker client when it cannot reach the broker: kombu wraps the transports' connection errors in its
# OperationalError; a few paths (a pooled connection whose socket died) surface the socket's own error.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, ConnectionError, TimeoutError)


class DependencyUnavailable(Exception):
    """The database or the broker cannot be reached; the request may be retried after ``retry_after`` seconds."""

    def __init__(self, dependency: str, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        return f"{self.dependency}_unavailable"

    def as_dict(self) -> dict[str, str | int]:
        """The answer's body: the API's error shape (``core.api.errors``), with when to retry."""
        return {"detail": str(self), "code": self.code, "retry_after": self.retry_after}


def database_unavailable() -> DependencyUnavailable:
    return DependencyUnavailable("database", "The database is unavailable; retry in a few seconds.")


def broker_unavailable() -> DependencyUnavailable:
    return DependencyUnavailable(
        "broker", "The task broker is unavailable, so no run can be started; nothing was stored. Retry later."
    )


def unavailable_dependency(exc: BaseException | None) -> DependencyUnavailable | None:
    """The outage ``exc`` stands for, or None when it is not one.

    ``OperationalError`` (connection refused, server gone, too many connections, SQLite busy) and
    ``InterfaceError`` (a connection closed under us) are the database's own "cannot serve now"; integrity, data
    and programming errors are not outages and stay 500s (or the 4xx the code gives them).
    """
    if exc is None:
        return None
    if isinstance(exc, DependencyUnavailable):
        return exc
    if isinstance(exc, OperationalError | InterfaceError):
        return database_unavailable()
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(exc, BROKER_ERRORS):
        return broker_unavailable()
    return None


def require_broker() -> None:
    """Raise :class:`DependencyUnavailable` unless the Celery broker accepts a connection now.

    A fresh connection (not the pool's, which may be connected to a broker that has since died); kombu's Redis
    transport pings on connect. Costs one round trip, paid only when a run starts.
    """
    from celery import current_app

    try:
        with current_app.connection_for_write(connect_timeout=BROKER_CHECK_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=0, timeout=BROKER_CHECK_TIMEOUT)
    except BROKER_ERRORS as exc:
        # The message names host and port at most (kombu strips the password from its errors' URLs); keep only
        # the class in the log to be sure.
        logger.warning("broker unavailable, refusing to start a run: %s", type(exc).__name__)
        raise broker_unavailable() from None
