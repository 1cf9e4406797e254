"""JSON errors everywhere: DRF's handler plus Django's 400/403/404/500 views.

Clients of an API never get an HTML page or a stack trace: every error is ``{"detail": ...}`` with the right
status, and unexpected exceptions are logged server-side with their traceback and answered with a plain 500.
A service's refusal (``core.errors.Refused``) is answered with its status and ``{"detail", "code", ...}``.
An outage of the database or the broker (``core.outages``) is answered 503 with ``Retry-After`` and
``{"detail", "code": "database_unavailable" | "broker_unavailable"}``, from DRF views and plain Django views alike
(the 500 view looks at the exception being handled).
"""

from __future__ import annotations

import logging
import sys

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from ..errors import Refused
from ..outages import DependencyUnavailable, unavailable_dependency

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, Refused):
        return Response(exc.as_dict(), status=exc.status)
    outage = unavailable_dependency(exc)
    if outage is not None:
        _log_outage(outage, exc)
        set_rollback()
        return Response(
            outage.as_dict(),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(outage.retry_after)},
        )
    if isinstance(exc, ValidationError):
        exc = exceptions.ValidationError(
            detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        view = context.get("view")
        logger.exception("unhandled error in %s", type(view).__name__ if view else "view", exc_info=exc)
        return Response({"detail": "Internal server error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return response


def bad_request(request, exception=None) -> JsonResponse:
    return JsonResponse({"detail": "Bad request."}, status=400)


def permission_denied(request, exception=None) -> JsonResponse:
    return JsonResponse({"detail": "You do not have permission to perform this action."}, status=403)


def not_found(request, exception=None) -> JsonResponse:
    return JsonResponse({"detail": f"Not found: {request.path}"}, status=404)


def server_error(request) -> JsonResponse:
    # Django calls this view while handling the exception, so the exception is at hand: an outage that escaped a
    # view outside DRF (the admin, a middleware) is still a 503, not a 500.
    exc = sys.exc_info()[1]
    outage = unavailable_dependency(exc)
    if outage is not None:
        _log_outage(outage, exc)
        response = JsonResponse(outage.as_dict(), status=503)
        response["Retry-After"] = str(outage.retry_after)
        return response
    return JsonResponse({"detail": "Internal server error."}, status=500)


def _log_outage(outage: DependencyUnavailable, exc: BaseException) -> None:
    # One line, no traceback: an outage is an operations event, and the driver's message names host and port
    # only (never the password of a DATABASE_URL or broker URL).
    logger.warning(
        "%s: %s: %s", outage.code, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
    )


__all__ = ["Http404", "PermissionDenied", "bad_request", "exception_handler", "not_found", "server_error"]
