"""Log lines as JSON (``LOG_FORMAT=json``), each naming the request and the run it belongs to.

A log collector (Loki, Elasticsearch, CloudWatch) reads one JSON object per line::

    {"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "core.workflow", "message": "...",
     "request_id": "3f2a...", "run_id": "0b8e...", "process": 12, "exc": "Traceback ..."}

``request_id`` and ``run_id`` are on every line, ``null`` when the line belongs to neither, so a query by either
key never misses a line for want of the key.

Where the ids come from:

- **request id**: :class:`RequestIdMiddleware` (first in ``MIDDLEWARE``) takes the client's or the ingress's
  ``X-Request-ID`` when it is a short token, else makes one, holds it in a context variable while the request is
  served and echoes it in the response's ``X-Request-ID``. gunicorn's access line is written after the response,
  so :class:`GunicornLogger` reads it back from that header. A task sent while a request is served carries it in
  a message header, so a run's worker lines name the request that started it.
- **run id**: Celery's ``task_prerun`` signal reads the task's ``run_id`` argument (every workflow task has one:
  ``core.execute_step``, ``core.check_step``, the fan-out tasks) into a context variable for the task's duration.

Only the formatter and the filter are used in the plain format; :func:`install` (called by settings when
``LOG_FORMAT=json``) also hands Celery's logging to Django's ``LOGGING`` (one handler, this formatter, in worker
and beat), so Celery's own lines are JSON too.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
run_id: ContextVar[str | None] = ContextVar("run_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
TASK_HEADER = "budcluster_request_id"
# A client's id is kept only when it is a plain token: it lands in logs and headers, so no spaces, quotes or
# control characters (log injection), and short.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{8,64}")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Puts the current request id and run id on every record (a record may bring its own: gunicorn's access
    line does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "run_id", None) is None:
            record.run_id = run_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines of messages and tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
            "run_id": getattr(record, "run_id", None) or run_id.get(),
            "process": record.process,
        }
        # Fields a caller passed with extra={...} (gunicorn's access fields, for one).
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def clean_request_id(value: str | None) -> str:
    """The id to use for a request: the given one when it is a plain token, else a new one."""
    if value and _TOKEN.fullmatch(value):
        return value
    return uuid.uuid4().hex


def _request_finished(**_: Any) -> None:
    request_id.set(None)


class RequestIdMiddleware:
    """Holds the request's id for the log lines written while it is served and returns it in X-Request-ID.

    The id stays set until Django's ``request_finished`` (the response closed), not only while the middleware
    chain runs: Django writes its "Not Found" / "Internal Server Error" lines after the chain has returned."""

    def __init__(self, get_response: Callable) -> None:
        from django.core.signals import request_finished

        self.get_response = get_response
        request_finished.connect(_request_finished, dispatch_uid="core.logformat.request_finished")

    def __call__(self, request):
        rid = clean_request_id(request.META.get("HTTP_X_REQUEST_ID"))
        request_id.set(rid)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        return response


def _task_run_id(task: Any, args: tuple, kwargs: dict) -> str | None:
    """The ``run_id`` argument of a task call, wherever it stands in the signature."""
    if "run_id" in (kwargs or {}):
        return str(kwargs["run_id"])
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except (TypeError, ValueError):
        return None
    value = bound.arguments.get("run_id")
    return None if value is None else str(value)


def _on_task_prerun(
    sender: Any = None, task: Any = None, args: tuple = (), kwargs: dict | None = None, **_: Any
):
    task = task or sender
    if task is None:
        return
    run_id.set(_task_run_id(task, args, kwargs or {}))
    request_id.set(getattr(task.request, TASK_HEADER, None))


def _on_task_postrun(**_: Any) -> None:
    run_id.set(None)
    request_id.set(None)


def _on_before_task_publish(headers: dict | None = None, **_: Any) -> None:
    rid = request_id.get()
    if headers is not None and rid and TASK_HEADER not in headers:
        headers[TASK_HEADER] = rid


def _leave_logging_to_django(loglevel: Any = None, **_: Any) -> None:
    """A receiver of Celery's ``setup_logging``: its presence makes Celery keep the handlers Django's LOGGING
    configured instead of adding its own plain-text ones. The level given on the command line (``-l``) still
    applies, as it does in the plain format."""
    if loglevel:
        logging.getLogger().setLevel(loglevel)


def _say_json(msg: str, f: Any = None) -> None:
    import sys

    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, msg, (), None)
    # As Celery's safe_say: a closed stream must not break a shutdown.
    with contextlib.suppress(Exception):
        print(JsonFormatter().format(record), file=f or sys.__stderr__, flush=True)


_installed = False


def install() -> None:
    """Connect the Celery signals that carry the ids (idempotent); called by settings when LOG_FORMAT=json."""
    global _installed
    if _installed:
        return
    from celery import signals

    signals.setup_logging.connect(_leave_logging_to_django, weak=False)
    # Python warnings (Celery's "running as root" one, deprecations) as log records, so JSON lines too.
    logging.captureWarnings(True)
    # The few lines a Celery worker prints itself instead of logging ("worker: Warm shutdown"): written as JSON,
    # straight to the stream, as Celery does from its signal handlers (no logging lock taken there).
    from celery.apps import worker as celery_worker

    celery_worker.safe_say = _say_json
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)
    signals.before_task_publish.connect(_on_before_task_publish, weak=False)
    _installed = True


def _gunicorn_logger_class() -> type:
    from gunicorn import glogging

    class GunicornLogger(glogging.Logger):
        """gunicorn's error and access lines through :class:`JsonFormatter`; the access line as fields
        (method, path, status, bytes, duration) with the request id the middleware put in the response."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())
                    handler.addFilter(ContextFilter())

        def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
            if not self.cfg.accesslog:
                return
            headers = dict((str(k).lower(), v) for k, v in (getattr(resp, "headers", None) or []))
            status = str(getattr(resp, "status", "") or "").split(" ", 1)[0]
            self.access_log.info(
                "%s %s %s",
                environ.get("REQUEST_METHOD"),
                environ.get("RAW_URI") or environ.get("PATH_INFO"),
                status,
                extra={
                    "request_id": headers.get(REQUEST_ID_HEADER.lower()),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status) if status.isdigit() else status,
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": round(request_time.total_seconds() * 1000, 1),
                    "remote_addr": environ.get("REMOTE_ADDR"),
                },
            )

    return GunicornLogger


def __getattr__(name: str) -> Any:
    # gunicorn imports the class by its dotted path (--logger-class core.logformat.GunicornLogger); built on first
    # use so that importing this module (every process, through LOGGING) does not import gunicorn.
    if name == "GunicornLogger":
        cls = _gunicorn_logger_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
