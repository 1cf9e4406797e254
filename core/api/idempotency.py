"""``Idempotency-Key``: a start retried by a client (a timeout, a 5xx, a dropped connection) starts nothing twice.

Every endpoint that starts a run (``POST``, answered 202) accepts the header. The first request with a key starts
the run as usual and the run records the key (``Run.idempotency_key``, unique per user and kind of run) together
with the extra fields of its 202 answer (``Run.accepted``). A later request by the same user with the same key for
the same kind of run starts nothing: it is answered 202 with the first run (its current status) and the header
``Idempotent-Replayed: true``, whatever its body says (as Stripe's API does, the key names the request, not its
content). Without the header nothing changes: each request starts a run.

Two requests with the same key at the same moment: the start runs in one transaction, so the second run's insert
waits for the first request's commit and then violates the unique constraint; that request is answered with the
first run too. A refusal (400, 409, 422, 503) stores nothing, so a retry with the same key is tried again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ..models import Run, recorded_user
from ..workflow import idempotency_key
from .responses import run_accepted

HEADER = "Idempotency-Key"
MAX_LENGTH = 255

IDEMPOTENCY_KEY = OpenApiParameter(
    HEADER,
    type={"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": "^[!-~]+$"},
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "A key of your choosing (1-255 printable ASCII characters, e.g. a UUID) naming this request. Retrying the "
        "request with the same key (same user, same kind of run) starts nothing: the answer is the run the first "
        "request started, with the header `Idempotent-Replayed: true`. Without it every request starts a run."
    ),
)


def _key(request) -> str | None:
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw
    if not key or len(key) > MAX_LENGTH or not all(" " < ch <= "~" for ch in key):
        raise ValidationError(
            {HEADER: [f"must be 1-{MAX_LENGTH} printable ASCII characters without spaces (e.g. a UUID)"]}
        )
    return key


def _first(user: Any, kind: str, key: str) -> Run | None:
    return Run.objects.filter(created_by=user, kind=kind, idempotency_key=key).first()


def _replay(run: Run, request) -> Response:
    response = run_accepted(run, request, **(run.accepted or {}))
    response["Idempotent-Replayed"] = "true"
    return response


def start_once(request, kind: str, start: Callable[[], tuple[Run, dict[str, Any]]]) -> Response:
    """Answer a run-starting request: ``start()`` starts the run of ``kind`` and returns it with the extra fields
    of the 202 answer, unless this user already started one with the request's ``Idempotency-Key``."""
    key = _key(request)
    user = recorded_user(request.user)
    if key is None or user is None:
        run, extra = start()
        return run_accepted(run, request, **extra)
    first = _first(user, kind, key)
    if first is not None:
        return _replay(first, request)
    try:
        with transaction.atomic(), idempotency_key(key):
            run, extra = start()
            Run.objects.filter(pk=run.pk).update(accepted=extra)
    except Exception:
        # The same key raced in from another request (its run committed first): answer with that run. Any other
        # failure is this request's own (a refusal, an outage) and stands.
        first = _first(user, kind, key)
        if first is None:
            raise
        return _replay(first, request)
    return run_accepted(run, request, **extra)
