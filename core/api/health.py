"""Health endpoints (no authentication): process, database and broker, each 200 or 503 with a reason.

A 503 carries the API's error fields too (``detail``, ``code``: ``database_unavailable`` /
``broker_unavailable``), and another method than GET or HEAD is a JSON 405, as everywhere else."""

from __future__ import annotations

import functools
import logging
import time
import uuid

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection, Exchange, Queue

from .errors import error_response

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 3.0


def _answer(ok: bool, check: str, started: float, reason: str = "") -> JsonResponse:
    body = {
        "status": "ok" if ok else "unavailable",
        "check": check,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
    if reason:
        body["reason"] = reason
    if not ok:
        body.update(detail=reason or f"{check} unavailable", code=f"{check}_unavailable")
    return JsonResponse(body, status=200 if ok else 503)


def require_GET(view):
    """Django's ``require_GET`` with the API's error body (its own 405 has an empty one)."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.method not in ("GET", "HEAD"):
            response = error_response(405, f'Method "{request.method}" not allowed.', "method_not_allowed")
            response["Allow"] = "GET, HEAD"
            return response
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
def health(request) -> JsonResponse:
    return _answer(True, "process", time.monotonic())


@require_GET
def health_db(request) -> JsonResponse:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("database health check failed: %s", exc)
        return _answer(False, "database", started, f"database unreachable: {type(exc).__name__}")
    return _answer(True, "database", started)


@require_GET
def health_broker(request) -> JsonResponse:
    """Publish a message to a throwaway queue on the broker and read it back.

    The endpoint is unauthenticated, so a call must leave nothing behind. The queue hangs off the broker's
    default (nameless) exchange: a named exchange would be a binding the broker keeps after the queue is gone
    (kombu's filesystem transport writes one ``<exchange>.exchange`` file per exchange and never removes it).
    """
    started = time.monotonic()
    token = uuid.uuid4().hex
    queue_name = f"budcluster.health.{token[:12]}"
    try:
        # A fresh connection each time (not the pool): the check must see the broker as it is now.
        with Connection(
            settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
            queue = conn.SimpleQueue(
                Queue(queue_name, Exchange(""), routing_key=queue_name, auto_delete=True, durable=False)
            )
            try:
                queue.put({"token": token})
                message = queue.get(block=True, timeout=BROKER_TIMEOUT)
                message.ack()
                if message.payload.get("token") != token:
                    return _answer(False, "broker", started, "broker returned a different message")
            finally:
                try:
                    queue.queue.delete()
                except Exception:  # not every transport can delete queues; auto_delete covers the rest
                    logger.debug("could not delete health queue %s", queue_name)
                queue.close()
    except Exception as exc:
        logger.warning("broker health check failed: %s", exc)
        return _answer(False, "broker", started, f"broker round trip failed: {type(exc).__name__}: {exc}")
    return _answer(True, "broker", started)
