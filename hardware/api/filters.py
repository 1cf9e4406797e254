"""Filters of the node inventory list (``GET /clusters/{id}/nodes``)."""

from __future__ import annotations

from django_filters import rest_framework as filters

from core.api.filters import BooleanFilter, FilterSet

from ..choices import AcceleratorType
from ..models import Node


class NodeFilter(FilterSet):
    accelerator_type = filters.ChoiceFilter(choices=AcceleratorType.choices)
    accelerator_vendor = filters.CharFilter(lookup_expr="iexact")
    accelerator_model = filters.CharFilter(lookup_expr="icontains")
    ready = BooleanFilter()
    schedulable = BooleanFilter()

    class Meta:
        model = Node
        fields = ("accelerator_type", "accelerator_vendor", "accelerator_model", "ready", "schedulable")
