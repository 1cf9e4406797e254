"""Request middleware of the API: a size cap on every request body (checked before anything reads it), and
trailing slashes accepted on API paths (:class:`TrailingSlashMiddleware`).

DRF reads the body stream itself, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` never applies to JSON, and a
multipart upload is spooled to disk whatever its size. :class:`RequestBodyLimitMiddleware` answers **413** with
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


class TrailingSlashMiddleware:
    """``/clusters/`` is ``/clusters``: a trailing slash on an API path is accepted, not a 404.

    API paths have no trailing slash (the original service's), but people and many HTTP clients add one. The path
    is rewritten before URL resolution when only the slash-less spelling exists, so every method (and its body)
    reaches the same view; a redirect would turn a POST into a GET in most clients and lose its body. Paths that
    exist with their slash (the admin's) are left alone, and answers keep naming the canonical, slash-less URLs.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if len(path) > 1 and path.endswith("/"):
            stripped = path.rstrip("/") or "/"
            urlconf = getattr(request, "urlconf", None)
            if not _resolves(path, urlconf) and _resolves(stripped, urlconf):
                cut = len(path) - len(stripped)
                request.path_info = stripped
                request.path = request.path[:-cut]
        return self.get_response(request)


def _resolves(path: str, urlconf) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path, urlconf)
    except Resolver404:
        return False
    return True
