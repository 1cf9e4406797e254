"""``GET /audit`` and ``GET /audit/{id}``: read-only, for users with ``audit.view_auditentry``."""

from __future__ import annotations

from rest_framework import mixins, viewsets

from ..models import AuditEntry
from .filters import AuditEntryFilter
from .serializers import AuditEntrySerializer


class AuditEntryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Who did what from the API, the admin and management commands, newest first."""

    queryset = AuditEntry.objects.all()
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilter
    search_fields = ("object_repr", "actor_name")
    ordering_fields = ("time", "id")
