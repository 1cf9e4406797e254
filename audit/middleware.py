"""The audit context of an HTTP request (API and admin): opened for unsafe methods, written when the view is done.

Safe methods (GET, HEAD, OPTIONS) change nothing a person asked for and get no context: a read that touches a row
on its own (knox removing an expired token while it authenticates) is housekeeping, not an act.

``process_view`` notes what the URL names (the DRF viewset action and its object, or the admin view, action and
selected objects) and reads those objects' followed fields, for the entry named after the view when the request
changed its object without a signal to report it (``audit.context``). The actor is read when the entry is written:
DRF authenticates a token inside the view, after this middleware has run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.admin.utils import unquote
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse

from core import logformat
from core.throttling import client_ip

from . import registry
from .capture import watch_writes
from .choices import Source
from .context import AuditContext, ViewTarget, activated, clean_ip, current, snapshot_of

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Names of the DRF actions in an entry: what was done, not how the endpoint is spelled.
DRF_VERBS = {"partial_update": "update", "destroy": "delete"}
# An admin action over more objects than this is recorded without reading their fields before.
MAX_SNAPSHOTS = 100


def _admin_prefix() -> str:
    try:
        return reverse("admin:index")
    except NoReverseMatch:
        return "/admin/"


class AuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._admin = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in SAFE_METHODS:
            return self.get_response(request)
        if self._admin is None:
            self._admin = _admin_prefix()
        source = Source.ADMIN if request.path.startswith(self._admin) else Source.API
        ctx = AuditContext(
            source=source,
            request=request,
            source_ip=clean_ip(client_ip(request)),
            label=f"{request.method} {request.path}",
        )
        try:
            with activated(ctx), connection.execute_wrapper(watch_writes(ctx)):
                response = self.get_response(request)
        except BaseException:
            ctx.flush(succeeded=False, request_id=logformat.request_id.get() or "")
            raise
        ctx.flush(succeeded=response.status_code < 400, request_id=logformat.request_id.get() or "")
        return response

    def process_view(self, request: HttpRequest, view_func: Any, view_args: tuple, view_kwargs: dict) -> None:
        ctx = current.get()
        if ctx is None or getattr(ctx, "request", None) is not request:
            return None
        model_admin = getattr(view_func, "model_admin", None)
        cls = getattr(view_func, "cls", None)
        if model_admin is not None:
            ctx.targets = _admin_targets(request, model_admin, view_kwargs)
        elif cls is not None and hasattr(cls, "as_view"):
            ctx.targets = _api_targets(request, view_func, cls, view_kwargs)
        return None


def _target(action: str, model, pk: Any, *, read: bool = True) -> ViewTarget:
    pk = "" if pk is None else str(pk)
    before = None
    if read and model is not None and pk and registry.rule(model) is not None:
        before, _ = snapshot_of(model, pk)
    return ViewTarget(action=action, model=model, pk=pk, before=before)


def _admin_targets(request: HttpRequest, model_admin: Any, kwargs: dict) -> list[ViewTarget]:
    model = model_admin.model
    name = model._meta.model_name
    # The changelist's action form: one entry per selected object (the CSRF check has read this form already).
    action = request.POST.get("action")
    if action and "_selected_action" in request.POST:
        selected = request.POST.getlist("_selected_action")
        return [
            _target(f"{name}.{action}", model, pk, read=i < MAX_SNAPSHOTS) for i, pk in enumerate(selected)
        ]
    url_name = getattr(request.resolver_match, "url_name", "") or ""
    prefix = f"{model._meta.app_label}_{name}_"
    verb = url_name[len(prefix) :] if url_name.startswith(prefix) else url_name or "change"
    pk = kwargs.get("object_id") or kwargs.get("pk")
    return [_target(f"{name}.{verb}", model, unquote(str(pk)) if pk is not None else None)]


def _api_targets(request: HttpRequest, view_func: Any, cls: Any, kwargs: dict) -> list[ViewTarget]:
    queryset = getattr(cls, "queryset", None)
    model = getattr(queryset, "model", None)
    actions = getattr(view_func, "actions", None) or {}
    verb = actions.get(request.method.lower())
    url_name = getattr(request.resolver_match, "url_name", "") or ""
    if verb and model is not None:
        action = f"{model._meta.model_name}.{DRF_VERBS.get(verb, verb)}"
    else:
        action = url_name.replace("-", ".", 1) or request.method.lower()
    return [_target(action, model, kwargs.get("pk"))]
