"""Filters of the deployment and benchmark lists.

``cluster`` takes a cluster's id or its name, as ``cluster`` does in ``POST /deployments/plan`` and
``/deployments/deploy``; a cluster that does not exist is a 400 naming it (not an empty list, which would look
like "no deployments there").
"""

from __future__ import annotations

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError

from clusters.models import Cluster
from core.api.filters import FilterSet

from ..models import Deployment


def cluster_by_reference(value: str) -> Cluster | None:
    """A cluster by id (digits) or name; None when there is none."""
    qs = Cluster.objects.defer("kubeconfig")
    text = str(value).strip()
    found = qs.filter(pk=int(text)).first() if text.isdigit() and len(text) < 19 else None
    if found is None and len(text) <= 100 and "\x00" not in text:
        found = qs.filter(name=text).first()
    return found


@extend_schema_field({"type": "string", "description": "Cluster id or name"})
class ClusterReferenceFilter(filters.CharFilter):
    def filter(self, qs, value):
        if value in (None, ""):
            return qs
        cluster = cluster_by_reference(value)
        if cluster is None:
            raise ValidationError({self.field_name: [f"no cluster {value!r} (give its id or name)"]})
        return qs.filter(cluster=cluster)


class DeploymentFilter(FilterSet):
    cluster = ClusterReferenceFilter()

    class Meta:
        model = Deployment
        fields = ("status", "cluster", "device_type", "model_name", "engine")
