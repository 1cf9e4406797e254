"""Query strings: an operation accepts exactly the query parameters it documents; anything else is a 400.

What an operation accepts comes from the same declarations the OpenAPI schema is generated from, so the two
cannot disagree:

* a list (``GET`` of a ``list`` action, a ``ListAPIView``, or an action named in the view's ``paged_actions``):
  the parameters of its filter backends (``core.api.filters``) and of its paginator (``limit``, ``offset``);
* any operation: the fields of its query serializer, declared once on the view as
  ``query_serializers = {"<action or method>": SomeQuerySerializer}``, which the view reads with
  :func:`query_params` and ``core.api.schema.AutoSchema`` documents;
* ``format`` where the view renders more than one format (DRF's URL format override).

:class:`KnownQueryParameters` applies the rule. It is a permission class because that is the one hook DRF runs
for every view after authentication and the model permissions (an anonymous or unauthorised request is still
401/403 first) and before the view looks anything up; it refuses with 400 ``unknown_parameter`` instead of
answering False. It is in ``DEFAULT_PERMISSION_CLASSES``; a view that sets its own ``permission_classes`` lists it
too (``tests/contract`` sends an unknown parameter to every operation of the schema).
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ErrorDetail, ValidationError
from rest_framework.mixins import ListModelMixin
from rest_framework.permissions import BasePermission
from rest_framework.settings import api_settings

from .filters import parameter_names


def _action(view, method: str) -> str:
    """The key of ``query_serializers``: the viewset action, or the lower-case method of a plain view."""
    return getattr(view, "action", None) or method.lower()


def is_list(view, method: str) -> bool:
    """Whether this operation answers a (paginated, filterable) list."""
    if method != "GET":
        return False
    action = getattr(view, "action", None)
    if action is not None:
        return action == "list" or action in getattr(view, "paged_actions", ())
    return isinstance(view, ListModelMixin)


def query_serializer(view, method: str) -> Any:
    return (getattr(view, "query_serializers", None) or {}).get(_action(view, method))


def _format_parameter(view) -> set[str]:
    formats = {getattr(r, "format", None) for r in getattr(view, "renderer_classes", ())} - {None}
    return (
        {api_settings.URL_FORMAT_OVERRIDE} if api_settings.URL_FORMAT_OVERRIDE and len(formats) > 1 else set()
    )


def accepted_parameters(view, method: str) -> frozenset[str]:
    """The query parameters this operation of ``view`` accepts (cached per view class, action and method)."""
    key = (
        type(view),
        getattr(view, "action", None),
        method,
        tuple(getattr(view, "filter_backends", ()) or ()),
    )
    return _accepted(key, view, method)


# Per view class, action, method and filter backends: a few dozen entries for the whole API.
_CACHE: dict[tuple, frozenset[str]] = {}


def _accepted(key: tuple, view, method: str) -> frozenset[str]:
    found = _CACHE.get(key)
    if found is not None:
        return found
    names: set[str] = set()
    if is_list(view, method):
        for backend in getattr(view, "filter_backends", ()) or ():
            names |= parameter_names(backend(), view)
        paginator = getattr(view, "paginator", None)
        if paginator is not None:
            names |= parameter_names(paginator, view)
    serializer = query_serializer(view, method)
    if serializer is not None:
        names |= {name for name, field in serializer().fields.items() if not field.read_only}
    names |= _format_parameter(view)
    _CACHE[key] = frozenset(names)
    return _CACHE[key]


class KnownQueryParameters(BasePermission):
    """Refuse (400 ``unknown_parameter``) query parameters the operation does not document."""

    def has_permission(self, request, view) -> bool:
        if request.method == "OPTIONS":
            return True
        method = "GET" if request.method == "HEAD" else request.method
        accepted = accepted_parameters(view, method)
        unknown = sorted(set(request.query_params) - accepted)
        if unknown:
            takes = ", ".join(sorted(accepted)) or "no query parameters"
            message = f"unknown query parameter; this operation takes {takes}"
            raise ValidationError(
                {name: [ErrorDetail(message, code="unknown_parameter")] for name in unknown}
            )
        return True


def query_params(view, request) -> dict[str, Any]:
    """The operation's query parameters, validated by its query serializer (400 for bad values)."""
    serializer_class = query_serializer(view, request.method)
    if serializer_class is None:
        return {}
    fields = serializer_class().fields
    data = {name: request.query_params.get(name) for name in fields if name in request.query_params}
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
