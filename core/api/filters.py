"""List filtering that refuses what it does not understand, for every list endpoint.

DRF and django-filter are lenient by default: an unknown query parameter, an ordering by a field that cannot be
ordered by, or ``?ready=maybe`` are silently ignored, so a typo returns the whole unfiltered list, which looks
like an answer. Here each is a 400 naming what was wrong and what is accepted:

* :class:`FilterBackend` (django-filter) builds its automatic filter sets on :class:`FilterSet`, whose boolean
  filters take only ``true/false/1/0/yes/no`` (:class:`BooleanFilter`); an invalid value of any filter is a 400;
* :class:`OrderingFilter` refuses an ordering term that is not one of the view's ``ordering_fields``;
* :class:`SearchFilter` and :class:`OrderingFilter` document their parameter only on views that have
  ``search_fields`` / ``ordering_fields``, so the schema shows exactly what a list accepts;
* parameters that no backend, paginator or query serializer declares are refused before the view runs, by
  ``core.api.query.KnownQueryParameters`` (which reads the names from these backends).

:class:`RunFilter` is the runs list's filter set (``subject_type`` as the answer spells it, ``app.model``).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django_filters import rest_framework as df
from django_filters.rest_framework import filterset as df_filterset
from drf_spectacular.utils import extend_schema_field
from rest_framework import filters
from rest_framework.exceptions import ValidationError

from ..models import Run

TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


class StrictBooleanField(forms.NullBooleanField):
    """``true/false/1/0/yes/no`` (any case) or empty (no filter); anything else is invalid."""

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise DjangoValidationError(f"{value!r} is not a boolean; use true or false", code="invalid")

    def validate(self, value: Any) -> None:
        return None


class _RawWidget(forms.TextInput):
    """Hands the query string's value to the field as it is (django-filter's BooleanWidget maps unknown words to
    "no filter" before any validation could see them)."""


class BooleanFilter(df.BooleanFilter):
    field_class = StrictBooleanField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("widget", _RawWidget)
        super().__init__(*args, **kwargs)


_FILTER_DEFAULTS = {
    **df_filterset.FILTER_FOR_DBFIELD_DEFAULTS,
    models.BooleanField: {"filter_class": BooleanFilter},
}


class FilterSet(df.FilterSet):
    """django-filter's DRF filter set with strict booleans; base of every filter set of the API."""

    FILTER_DEFAULTS = _FILTER_DEFAULTS


class FilterBackend(df.DjangoFilterBackend):
    filterset_base = FilterSet

    def parameter_names(self, view) -> set[str]:
        """The query parameters this backend reads on ``view`` (as the schema documents them)."""
        queryset = getattr(type(view), "queryset", None)
        model = getattr(queryset, "model", None)
        filterset_class = self.get_filterset_class(view, model._default_manager.none() if model else None)
        return set(filterset_class.base_filters) if filterset_class else set()


class SearchFilter(filters.SearchFilter):
    def parameter_names(self, view) -> set[str]:
        return {self.search_param} if getattr(view, "search_fields", None) else set()

    def get_schema_operation_parameters(self, view) -> list[dict]:
        return super().get_schema_operation_parameters(view) if self.parameter_names(view) else []


class OrderingFilter(filters.OrderingFilter):
    def parameter_names(self, view) -> set[str]:
        return {self.ordering_param} if getattr(view, "ordering_fields", None) else set()

    def get_schema_operation_parameters(self, view) -> list[dict]:
        if not self.parameter_names(view):
            return []
        [parameter] = super().get_schema_operation_parameters(view)
        fields = ", ".join(view.ordering_fields)
        parameter["description"] = (
            f"Comma-separated fields to order by, '-' first for descending; one of: {fields}"
        )
        return [parameter]

    def remove_invalid_fields(self, queryset, fields, view, request) -> list[str]:
        valid = {item[0] for item in self.get_valid_fields(queryset, view, {"request": request})}
        unknown = [term for term in fields if term.removeprefix("-") not in valid]
        if unknown:
            raise ValidationError(
                {
                    self.ordering_param: [
                        f"cannot order by {', '.join(unknown)}; one of: {', '.join(sorted(valid))}"
                    ]
                }
            )
        return list(fields)


def parameter_names(backend: Any, view) -> set[str]:
    """Query parameters a filter backend (or paginator) reads on ``view``."""
    if hasattr(backend, "parameter_names"):
        return set(backend.parameter_names(view))
    return {p["name"] for p in backend.get_schema_operation_parameters(view) if p.get("in") == "query"}


@extend_schema_field(
    {"type": "string", "description": "The subject's type as runs show it, e.g. clusters.cluster"}
)
class SubjectTypeFilter(df.CharFilter):
    """``app_label.model`` (as the runs API spells ``subject_type``); an unknown type is a 400."""

    def filter(self, qs, value):
        if value in (None, ""):
            return qs
        app_label, _, model = str(value).strip().lower().partition(".")
        content_type = ContentType.objects.filter(app_label=app_label, model=model).first() if model else None
        if content_type is None:
            known = sorted(
                f"{a}.{m}"
                for a, m in Run.objects.exclude(subject_type=None)
                .values_list("subject_type__app_label", "subject_type__model")
                .distinct()
            )
            examples = ", ".join(known) or "clusters.cluster"
            raise ValidationError(
                {"subject_type": [f"no subject type {value!r}; use app.model, e.g. {examples}"]}
            )
        return qs.filter(subject_type=content_type)


class RunFilter(FilterSet):
    subject_type = SubjectTypeFilter()

    class Meta:
        model = Run
        fields = ("kind", "status", "subject_type", "subject_id")
