"""One error body for every 4xx and 5xx the service answers: ``{"detail": ..., "code": ..., ...}``.

* ``detail``: what is wrong and what to do, in words, for people (may change between releases);
* ``code``: a stable machine-readable reason; clients match this, never the words;
* ``errors`` (validation errors only): ``{"<field path>": ["message", ...]}`` with nested fields joined by dots
  (``s3.endpoint``, ``node_pools.1.name``, ``env.MY_VAR``); ``non_field_errors`` for the body as a whole;
* further keys where a refusal carries data (``limit`` of a 413, ``refusals`` of a deployment that fits
  nowhere, ``retry_after`` of a 429 and a 503, ...).

Every path to an error answer ends here, so the shape cannot drift: a service's refusal (``core.errors.Refused``)
is ``{"detail", "code", **data}``; DRF's own exceptions (validation, 401, 403, 404, 405, 406, 415, 429, parse
errors) get the exception's code (``not_found``, ``method_not_allowed``, ``throttled``, ...); Django's error views
(``handler400/403/404/500``: a URL nothing serves, a request Django itself refuses such as too many form fields)
answer the same shape; an outage of the database or the broker (``core.outages``) is 503 with ``Retry-After`` and
``database_unavailable`` / ``broker_unavailable``; anything unexpected is logged with its traceback and answered
500 ``server_error``. The OpenAPI schema documents the shape as the ``Error`` component on every operation
(``core.api.schema``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation, ValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from ..errors import Refused
from ..outages import DependencyUnavailable, unavailable_dependency

logger = logging.getLogger(__name__)

# Top-level codes of validation errors: the specific one when every error is of that kind (a client that sent a
# key this API does not know learns so without reading the messages), else "invalid".
UNKNOWN_CODES = ("unknown_field", "unknown_parameter")


def error_body(detail: str, code: str, **extra: Any) -> dict[str, Any]:
    """The body of an error answer (see the module docstring)."""
    return {"detail": detail, "code": code, **extra}


def error_response(status_code: int, detail: str, code: str, **extra: Any) -> JsonResponse:
    """An error answer outside DRF (plain Django views, middleware)."""
    return JsonResponse(error_body(detail, code, **extra), status=status_code)


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation detail as ``{"a.b.0.c": [messages]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_errors(value, path))
    elif isinstance(detail, list) and detail and all(not isinstance(d, Mapping | list) for d in detail):
        out[prefix or "non_field_errors"] = [str(d) for d in detail]
    elif isinstance(detail, list):
        # many=True: one entry per item, empty for items without errors.
        for index, value in enumerate(detail):
            if value:
                out.update(flatten_errors(value, f"{prefix}.{index}" if prefix else str(index)))
    elif detail not in (None, ""):
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _codes(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_codes(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_codes(v) for v in value)) if value else set()
    return {str(value)}


def validation_body(exc: exceptions.ValidationError) -> dict[str, Any]:
    errors = flatten_errors(exc.detail)
    codes = _codes(exc.get_codes())
    code = codes.pop() if len(codes) == 1 and next(iter(codes)) in UNKNOWN_CODES else "invalid"
    first_field, messages = next(iter(errors.items()), ("non_field_errors", ["invalid input"]))
    where = "" if first_field == "non_field_errors" else f"{first_field}: "
    more = len(errors) - 1
    detail = f"Invalid input: {where}{messages[0]}" + (f" (and {more} more)" if more > 0 else "")
    return error_body(detail, code, errors=errors)


def _detail_text(detail: Any) -> str:
    if isinstance(detail, Mapping | list):
        flat = flatten_errors(detail)
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in flat.items()) or "error"
    return str(detail)


def _api_exception_body(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        return validation_body(exc)
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    body = error_body(_detail_text(exc.detail), str(code))
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        body["retry_after"] = int(exc.wait + 0.999)
    return body


def _suspicious(exc: SuspiciousOperation) -> tuple[int, dict[str, Any]]:
    """Requests Django itself refuses while reading them (over DATA_UPLOAD_MAX_* limits, a bad Host)."""
    if isinstance(exc, RequestDataTooBig):
        return 413, error_body(
            "Request body is larger than the service accepts (DATA_UPLOAD_MAX_MEMORY_SIZE).", "body_too_large"
        )
    name = type(exc).__name__
    if name in ("TooManyFieldsSent", "TooManyFilesSent"):
        return 400, error_body(f"Request refused: {exc}", "too_many_fields")
    return 400, error_body("Bad request.", "bad_request")


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``: every exception a DRF view raises, answered in the one error shape."""
    if isinstance(exc, Refused):
        return Response(error_body(str(exc), exc.code, **exc.data), status=exc.status)
    outage = unavailable_dependency(exc)
    if outage is not None:
        _log_outage(outage, exc)
        set_rollback()
        return _outage_response(outage, Response)
    if isinstance(exc, SuspiciousOperation):
        status_code, body = _suspicious(exc)
        return Response(body, status=status_code)
    if isinstance(exc, ValidationError):
        exc = exceptions.ValidationError(
            detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    response = drf_exception_handler(exc, context)  # Http404 and PermissionDenied become DRF's; headers set
    if response is None:
        view = context.get("view")
        logger.exception("unhandled error in %s", type(view).__name__ if view else "view", exc_info=exc)
        return Response(error_body("Internal server error.", "server_error"), status=500)
    if isinstance(exc, exceptions.APIException):
        response.data = _api_exception_body(exc)
    else:  # Http404 / PermissionDenied: DRF answered with its own exception's detail
        translated = exceptions.NotFound() if isinstance(exc, Http404) else exceptions.PermissionDenied()
        response.data = _api_exception_body(translated)
    return response


def _outage_response(outage: DependencyUnavailable, response_class):
    response = response_class(outage.as_dict(), status=status.HTTP_503_SERVICE_UNAVAILABLE)
    response["Retry-After"] = str(outage.retry_after)
    return response


# --- Django's error views (handler400/403/404/500 in the root URLconf) ---------------------------------------------


def bad_request(request, exception=None) -> JsonResponse:
    if isinstance(exception, SuspiciousOperation):
        status_code, body = _suspicious(exception)
        return JsonResponse(body, status=status_code)
    return error_response(400, "Bad request.", "bad_request")


def permission_denied(request, exception=None) -> JsonResponse:
    return error_response(403, "You do not have permission to perform this action.", "permission_denied")


def not_found(request, exception=None) -> JsonResponse:
    return error_response(404, f"Not found: {request.path}", "not_found")


def server_error(request) -> JsonResponse:
    # Django calls this view while handling the exception, so the exception is at hand: an outage that escaped a
    # view outside DRF (the admin, a middleware) is still a 503, not a 500.
    exc = sys.exc_info()[1]
    outage = unavailable_dependency(exc)
    if outage is not None:
        _log_outage(outage, exc)
        return _outage_response(outage, JsonResponse)
    return error_response(500, "Internal server error.", "server_error")


def _log_outage(outage: DependencyUnavailable, exc: BaseException) -> None:
    # One line, no traceback: an outage is an operations event, and the driver's message names host and port
    # only (never the password of a DATABASE_URL or broker URL).
    logger.warning(
        "%s: %s: %s", outage.code, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
    )


__all__ = [
    "Http404",
    "PermissionDenied",
    "bad_request",
    "error_body",
    "error_response",
    "exception_handler",
    "flatten_errors",
    "not_found",
    "server_error",
]
