"""API permissions: Django model permissions, including reads and custom actions.

DRF's ``DjangoModelPermissions`` lets any authenticated user read; operators expect the admin's "view"
permission to gate reads too, and custom actions (cancel, approve, scale, ...) to name their own permission.
A viewset action declares it with ``@action(..., required_perms=["core.cancel_run"])``-style attribute
``permission_map = {"cancel": ["%(app_label)s.cancel_%(model_name)s"]}``.
"""

from __future__ import annotations

from rest_framework.permissions import DjangoModelPermissions


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
