"""Filters of ``GET /audit``."""

from __future__ import annotations

from datetime import UTC

from django_filters import rest_framework as df
from rest_framework.exceptions import ValidationError

from core.api.filters import FilterSet

from ..models import AuditEntry


class TimeFilter(df.IsoDateTimeFilter):
    """An ISO 8601 time compared in UTC. Python takes any UTC offset below a day, PostgreSQL none beyond 15:59, so
    the time is converted before it reaches the query; one that falls outside the years 1-9999 is a 400."""

    def __init__(self, *args, parameter: str, **kwargs) -> None:
        self.parameter = parameter
        super().__init__(*args, **kwargs)

    def filter(self, qs, value):
        if value is None:
            return qs
        try:
            value = value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValidationError({self.parameter: ["time out of range (years 1-9999)"]}) from None
        return super().filter(qs, value)


class AuditEntryFilter(FilterSet):
    actor = df.CharFilter(field_name="actor_name", help_text="Username (exact), or a command's OS user")
    action = df.CharFilter(help_text="e.g. cluster.delete, deployment.update, user.create")
    object_type = df.CharFilter(lookup_expr="iexact", help_text="app_label.model, e.g. clusters.cluster")
    object_id = df.CharFilter()
    run_id = df.UUIDFilter()
    since = TimeFilter(
        parameter="since", field_name="time", lookup_expr="gte", help_text="From this time (ISO 8601)"
    )
    until = TimeFilter(
        parameter="until", field_name="time", lookup_expr="lte", help_text="Up to this time (ISO 8601)"
    )

    class Meta:
        model = AuditEntry
        fields = ("actor", "action", "object_type", "object_id", "source", "run_id", "since", "until")
