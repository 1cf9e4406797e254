"""Node inventory endpoints under a cluster: nodes, device info, and the collection run."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from clusters.models import Cluster
from core.api.idempotency import IDEMPOTENCY_KEY, start_once
from core.api.responses import RUN_ACCEPTED, refusal
from core.api.serializers import NoBody

from .. import services
from ..models import Node
from .filters import NodeFilter
from .serializers import NodeSerializer


class ClusterNodeList(generics.ListAPIView):
    """The cluster's node inventory (filter by accelerator type/vendor/model, ready, schedulable)."""

    serializer_class = NodeSerializer
    filterset_class = NodeFilter
    search_fields = ("name", "accelerator_model", "cpu_model")
    ordering_fields = ("name", "accelerator_count", "free_accelerators", "memory_bytes")
    queryset = Node.objects.all()

    def get_queryset(self):
        cluster = get_object_or_404(Cluster.objects.defer("kubeconfig"), pk=self.kwargs["pk"])
        return Node.objects.filter(cluster=cluster).order_by("name")


class ClusterDeviceInfo(APIView):
    queryset = Node.objects.all()  # for model permissions (view_node)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        """Per node: devices with total and free counts, CPU and memory (the summary placement uses)."""
        cluster = get_object_or_404(Cluster.objects.defer("kubeconfig"), pk=pk)
        return Response(
            {"cluster": cluster.name, "summary": services.cluster_summaries([cluster.pk])[cluster.pk],
             "nodes": services.device_info(cluster)}
        )  # fmt: skip


class CollectNodeInfo(APIView):
    queryset = Node.objects.all()
    permission_map = {None: [services.COLLECT_PERMISSION]}

    @extend_schema(
        request=None,
        responses={
            202: RUN_ACCEPTED,
            409: refusal(
                services.CollectionRefused, "Refused: the cluster is registering, deleting or in error"
            ),
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    def post(self, request, pk: int):
        """Roll out the collectors, wait for them, and refresh the inventory (202 + run). Takes no body."""
        NoBody(data=request.data).is_valid(raise_exception=True)
        cluster = get_object_or_404(Cluster.objects.defer("kubeconfig"), pk=pk)
        return start_once(
            request,
            "hardware.collect",
            lambda: (services.start_collection(cluster, user=request.user), {"cluster_id": cluster.pk}),
        )
