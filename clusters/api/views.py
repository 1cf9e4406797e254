"""Cluster endpoints (the original service's paths): register, list, detail, update, delete, live health, events."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core import crypto
from core.api.errors import error_body
from core.api.idempotency import IDEMPOTENCY_KEY, start_once
from core.api.query import KnownQueryParameters, query_params
from core.api.responses import RUN_ACCEPTED, error_answer, refusal, run_accepted
from core.fields import raw_token
from core.permissions import can_view

from .. import extensions, services
from ..models import Cluster
from .serializers import (
    ClusterDeleteQuery,
    ClusterEventSerializer,
    ClusterRegisterFormSerializer,
    ClusterRegisterSerializer,
    ClusterSerializer,
    ClusterUpdateSerializer,
    HealthQuery,
)

FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
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
    query_serializers = {"destroy": ClusterDeleteQuery, "health": HealthQuery}
    paged_actions = ("events",)

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
        request={
            "application/json": ClusterRegisterSerializer,
            "multipart/form-data": ClusterRegisterFormSerializer,
            "application/x-www-form-urlencoded": ClusterRegisterFormSerializer,
        },
        responses={202: RUN_ACCEPTED, 400: REFUSED_400, 409: REFUSED_409},
        parameters=[IDEMPOTENCY_KEY],
    )
    @action(detail=False, methods=["post"])
    def register(self, request):
        """Register an existing cluster by kubeconfig (text, file upload, or encrypted to the public key)."""
        form = request.content_type.split(";")[0].strip() in FORM_MEDIA_TYPES
        body = (ClusterRegisterFormSerializer if form else ClusterRegisterSerializer)(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        raw = services.read_kubeconfig_upload(
            text=data.get("kubeconfig"),
            envelope=data.get("encrypted_kubeconfig"),
            upload=data.get("kubeconfig_file"),
        )

        def start():
            cluster, run = services.register_validated(data, raw, request.user)
            return run, {"cluster_id": cluster.pk}

        return start_once(request, "cluster.register", start)

    @extend_schema(
        request=ClusterUpdateSerializer,
        responses={200: ClusterSerializer, 202: RUN_ACCEPTED, 400: REFUSED_400, 409: REFUSED_409},
    )
    def partial_update(self, request, *args, **kwargs):
        """Change some of name, ingress URL and labels; a new kubeconfig is validated and re-verified (202 + run).

        The 200 answer is the cluster for users who may view clusters, ``{id, updated}`` otherwise."""
        return self.update(request, *args, partial=True, **kwargs)

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
        responses={
            202: RUN_ACCEPTED,
            409: refusal(services.RegistrationRefused, "Refused: active deployments, or already deleting"),
        },
    )
    def destroy(self, request, *args, **kwargs):
        """Start the deletion run: remove what BudCluster installed on the cluster, then the record."""
        cluster = self.get_object()
        force = query_params(self, request)["force"]
        run = services.request_delete(cluster, force=force, user=request.user)
        return run_accepted(run, request, cluster_id=cluster.pk)

    @extend_schema(
        responses={
            200: OpenApiTypes.OBJECT,
            503: error_answer(
                "Unhealthy: a check failed or the cluster did not answer (the report is in the body)",
                codes=["cluster_unhealthy"],
                schema={
                    "type": "object",
                    "properties": {"healthy": {"type": "boolean"}, "checks": {"type": "object"}},
                },
            ),
        },
    )
    @action(detail=True, methods=["get"])
    def health(self, request, pk=None):
        """Live health check of the cluster (not the stored status): 200 when healthy, 503 otherwise."""
        cluster = Cluster.objects.get(pk=self.get_object().pk)
        raw = query_params(self, request).get("checks", "")
        checks = [c.strip() for c in raw.split(",") if c.strip()] or None
        try:
            result = services.check_health(cluster, checks)
        except ValueError as exc:
            raise ValidationError({"checks": [str(exc)]}) from None
        if result["healthy"]:
            return Response(result)
        report = result["checks"]
        failing = [f"{name}: {c.get('error') or 'not ok'}" for name, c in report.items() if not c.get("ok")]
        if result.get("error"):
            failing.append(result["error"])
        detail = f"cluster {cluster.name} is unhealthy: " + ("; ".join(failing) or "a check failed")
        return Response({**error_body(detail, "cluster_unhealthy"), **result}, status=503)

    # A page of events (they grow with every status change): limit/offset, newest first; no cluster filters.
    @extend_schema(responses={200: ClusterEventSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def events(self, request, pk=None):
        """The cluster's status changes, newest first (paginated)."""
        cluster = self.get_object()
        page = self.paginate_queryset(cluster.events.order_by("-created_at", "-id"))
        return self.get_paginated_response(ClusterEventSerializer(page, many=True).data)


class PublicKeyView(APIView):
    """The RSA public key clients may encrypt a kubeconfig to (see ``encrypted_kubeconfig``)."""

    permission_classes = (IsAuthenticated, KnownQueryParameters)

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
