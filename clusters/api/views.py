"""Cluster endpoints (the original service's paths): register, list, detail, update, delete, live health."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core import crypto
from core.api.responses import RUN_ACCEPTED, refusal, run_accepted
from core.fields import raw_token
from core.permissions import can_view

from .. import extensions, services
from ..models import Cluster
from .serializers import (
    ClusterEventSerializer,
    ClusterRegisterSerializer,
    ClusterSerializer,
    ClusterUpdateSerializer,
)

REFUSED_400 = refusal(
    services.RegistrationRefused, "Refused: the kubeconfig is missing, too large or invalid"
)
REFUSED_409 = refusal(
    services.RegistrationRefused, "Refused: the name or server is taken, or the cluster is busy"
)


class ClusterViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Cluster.objects.defer("kubeconfig").annotate(kubeconfig_token=raw_token("kubeconfig"))
    serializer_class = ClusterSerializer
    filterset_fields = ("status", "platform")
    search_fields = ("name",)
    ordering_fields = ("name", "created_at", "status", "last_checked")
    parser_classes = (parsers.JSONParser, parsers.MultiPartParser, parsers.FormParser)
    permission_map = {"register": ["clusters.add_cluster"], "health": ["clusters.check_cluster"]}

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if self.action == "list":
            context["summaries"] = None  # filled per page in list()
        return context

    def list(self, request, *args, **kwargs):
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        rows = page if page is not None else list(queryset)
        summaries = extensions.summaries([c.pk for c in rows])
        serializer = ClusterSerializer(
            rows, many=True, context={**self.get_serializer_context(), "summaries": summaries}
        )
        if page is not None:
            return self.get_paginated_response(serializer.data)
        return Response(serializer.data)

    @extend_schema(
        request=ClusterRegisterSerializer,
        responses={202: RUN_ACCEPTED, 400: REFUSED_400, 409: REFUSED_409},
    )
    @action(detail=False, methods=["post"])
    def register(self, request):
        """Register an existing cluster by kubeconfig (text, file upload, or encrypted to the public key)."""
        body = ClusterRegisterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        raw = services.read_kubeconfig_upload(
            text=data.get("kubeconfig"),
            envelope=data.get("encrypted_kubeconfig"),
            upload=data.get("kubeconfig_file"),
        )
        cluster, run = services.register_cluster(
            name=data["name"],
            kubeconfig=raw,
            context=data.get("context") or None,
            ingress_url=data.get("ingress_url", ""),
            labels=data.get("labels") or {},
            user=request.user,
        )
        return run_accepted(run, request, cluster_id=cluster.pk)

    @extend_schema(
        request=ClusterUpdateSerializer,
        responses={200: ClusterSerializer, 202: RUN_ACCEPTED, 400: REFUSED_400, 409: REFUSED_409},
    )
    def update(self, request, *args, **kwargs):
        """Change name, ingress URL or labels; a new kubeconfig is validated and re-verified (202 + run).

        The 200 answer is the cluster for users who may view clusters, ``{id, updated}`` otherwise."""
        partial = kwargs.pop("partial", False)
        cluster = self.get_object()
        body = ClusterUpdateSerializer(cluster, data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        kubeconfig = data.pop("kubeconfig", None)
        context = data.pop("context", None) or None
        run = services.update_cluster(
            cluster,
            data,
            kubeconfig=kubeconfig.encode() if kubeconfig is not None else None,
            context=context,
            user=request.user,
        )
        if run is not None:
            return run_accepted(run, request, cluster_id=cluster.pk)
        if not can_view(request.user, Cluster):
            return Response({"id": cluster.pk, "updated": sorted(data)})
        fresh = self.get_queryset().get(pk=cluster.pk)
        return Response(ClusterSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("force", OpenApiTypes.BOOL, description="Delete even with active deployments")
        ],
        responses={
            202: RUN_ACCEPTED,
            409: refusal(services.RegistrationRefused, "Refused: active deployments, or already deleting"),
        },
    )
    def destroy(self, request, *args, **kwargs):
        """Start the deletion run: remove what BudCluster installed on the cluster, then the record."""
        cluster = self.get_object()
        force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
        run = services.request_delete(cluster, force=force, user=request.user)
        return run_accepted(run, request, cluster_id=cluster.pk)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "checks", OpenApiTypes.STR, description="Comma-separated subset of api,nodes,gpu,storage"
            )
        ],
        responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["get"])
    def health(self, request, pk=None):
        """Live health check of the cluster (not the stored status): 200 when healthy, 503 otherwise."""
        cluster = Cluster.objects.get(pk=self.get_object().pk)
        checks = [c.strip() for c in request.query_params.get("checks", "").split(",") if c.strip()] or None
        try:
            result = services.check_health(cluster, checks)
        except ValueError as exc:
            raise ValidationError({"checks": str(exc)}) from None
        return Response(result, status=200 if result["healthy"] else 503)

    @extend_schema(responses={200: ClusterEventSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """The cluster's status changes, newest first."""
        cluster = self.get_object()
        events = cluster.events.all()[:200]
        return Response(ClusterEventSerializer(events, many=True).data)


class PublicKeyView(APIView):
    """The RSA public key clients may encrypt a kubeconfig to (see ``encrypted_kubeconfig``)."""

    permission_classes = (IsAuthenticated,)

    @extend_schema(
        responses={
            200: inline_serializer(
                "PublicKey", {"public_key": serializers.CharField(), "algorithm": serializers.CharField()}
            )
        }
    )
    def get(self, request):
        return Response(
            {
                "public_key": crypto.public_key_pem(),
                "algorithm": "RSA-OAEP-SHA256 wrapping an AES-256-GCM key",
            },
            status=status.HTTP_200_OK,
        )
