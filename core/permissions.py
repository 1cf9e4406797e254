"""API permissions: Django model permissions, including reads and custom actions.

DRF's ``DjangoModelPermissions`` lets any authenticated user read; operators expect the admin's "view"
permission to gate reads too, and custom actions (cancel, approve, scale, ...) to name their own permission.
A viewset action declares it with the view attribute
``permission_map = {"cancel": ["%(app_label)s.cancel_%(model_name)s"]}``.

Two rules every view follows:

* Permission comes before any lookup: the model is read from the view's ``queryset`` attribute, never by
  calling ``get_queryset()`` (which may look up a parent object from the URL, answering 404 for a missing id
  where an existing one answers 403, or do work). A missing object is a 404 only for users who may act.
* An answer shows an object only to users who may view it (:func:`can_view`): an action allowed without the
  view permission (cancel, change, add) answers with identifiers, not the object.

Every API request checks a permission, and the user is read afresh with each request (by its token), so Django's
per-user permission cache lasts one request. The token authentication (``core.tokens``) reads the user's
permissions in the same query as the token and the user; :class:`ModelBackend` (``AUTHENTICATION_BACKENDS``) reads
them in one query where Django's reads them in two (a session, a user without a token). Nothing is cached across
requests, so a permission granted or revoked applies to the next request.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import backends
from django.db import models
from django.db.models import OuterRef, Value
from django.db.models.functions import Concat
from rest_framework.permissions import DjangoModelPermissions


def view_permission(model: type[models.Model] | models.Model) -> str:
    """``app_label.view_modelname`` of a model (or of an object's model)."""
    opts = model._meta
    return f"{opts.app_label}.view_{opts.model_name}"


def can_view(user: Any, model: type[models.Model] | models.Model) -> bool:
    """Whether ``user`` may see objects of ``model`` (its view permission)."""
    return bool(user and user.is_authenticated and user.has_perm(view_permission(model)))


class ModelPermissions(DjangoModelPermissions):
    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": [],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if getattr(view, "_ignore_model_permissions", False):
            return True
        queryset = self._queryset(view)
        action_perms = getattr(view, "permission_map", {}).get(getattr(view, "action", None))
        if action_perms is not None:
            kwargs = {
                "app_label": queryset.model._meta.app_label,
                "model_name": queryset.model._meta.model_name,
            }
            return request.user.has_perms([p % kwargs for p in action_perms])
        return super().has_permission(request, view)

    def _queryset(self, view):
        # The class attribute names the model; get_queryset() may look objects up (see the module docstring).
        queryset = getattr(type(view), "queryset", None)
        if queryset is not None:
            return queryset
        return super()._queryset(view)


def permission_names(user: Any):
    """``app_label.codename`` of each permission ``user`` holds, its own and through its groups, as one query (the
    same name may come twice). ``user``: a user id, or ``OuterRef("user_id")`` to use it as a subquery (the token
    authentication reads them with the token: ``core.tokens``).

    Two ``IN`` subqueries, not joins through both many-to-many tables: joined, each permission's rows would multiply
    by every user holding it directly times every membership of a group holding it, before the user is filtered."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission

    inner = OuterRef(user) if isinstance(user, OuterRef) else user  # one level deeper inside the subqueries
    own = get_user_model().user_permissions.through.objects.filter(user_id=inner).values("permission_id")
    grouped = Group.permissions.through.objects.filter(group__user=inner).values("permission_id")
    return (
        Permission.objects.filter(models.Q(pk__in=own) | models.Q(pk__in=grouped))
        .order_by()
        .annotate(
            perm=Concat("content_type__app_label", Value("."), "codename", output_field=models.CharField())
        )
        .values_list("perm", flat=True)
    )


class ModelBackend(backends.ModelBackend):
    """Django's model backend, with a user's permissions (own and through groups) read in one query, or none when
    the token authentication read them already (it sets the same per-request cache, ``_perm_cache``)."""

    def get_all_permissions(self, user_obj, obj=None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                return super().get_all_permissions(user_obj)
            user_obj._perm_cache = set(permission_names(user_obj.pk))
        return user_obj._perm_cache
