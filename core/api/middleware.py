"""A size cap on every request body, checked before anything reads it.

DRF reads the body stream itself, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` never applies to JSON, and a
multipart upload is spooled to disk whatever its size. This middleware answers **413** with
``{"detail", "code": "body_too_large", "limit": ...}`` for a declared ``Content-Length`` above ``API_MAX_BODY_BYTES``
(default 2 MiB: a 1 MiB kubeconfig, ``KUBECONFIG_MAX_BYTES``, fits in any of its three encodings), and 400 for a
``Content-Length`` that is no number. Django reads exactly ``Content-Length`` bytes (a body without one, e.g.
chunked under a WSGI server, reads as empty), so the declared length bounds what any parser sees.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from ..conf import setting

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


def max_body_bytes() -> int:
    return int(setting("API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


class RequestBodyLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            return JsonResponse(
                {"detail": "Content-Length is not a number of bytes.", "code": "bad_content_length"},
                status=400,
            )
        limit = max_body_bytes()
        if length > limit:
            return JsonResponse(
                {
                    "detail": f"Request body is {length} bytes, more than the {limit} bytes allowed "
                    "(API_MAX_BODY_BYTES).",
                    "code": "body_too_large",
                    "limit": limit,
                },
                status=413,
            )
        return self.get_response(request)
