"""Deployment endpoints (the original service's paths first): plan, deploy, list, detail, update, rollback, delete,
workers and their logs.

Views parse the request and call one service function each; a refusal (``services.DeploymentRefused``) is
answered by the API's exception handler with its status and ``{"detail", "code", ...}``.
"""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from core.api.responses import RUN_ACCEPTED, refusal, run_accepted
from core.gateway import GatewayError

from .. import health, services
from ..models import Deployment, Worker
from ..services import DeploymentRefused
from .serializers import (
    DeploymentDetailSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    DeploySerializer,
    PlanSerializer,
    RollbackSerializer,
    WorkerSerializer,
)

INVALID_400 = refusal(
    DeploymentRefused, "Refused: invalid request (model, dtype, context, ...), or values the charts refuse"
)
BUSY_409 = refusal(
    DeploymentRefused, "Refused: not running yet, no installed runtime, or another run in progress"
)


class DeploymentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    queryset = Deployment.objects.select_related("cluster", "release").defer(
        "credentials", "cluster__kubeconfig"
    )
    serializer_class = DeploymentSerializer
    filterset_fields = ("status", "cluster", "device_type", "model_name", "engine")
    search_fields = ("name", "model_name", "namespace")
    ordering_fields = ("created_at", "name", "status", "updated_at")
    permission_map = {
        "plan": ["%(app_label)s.view_%(model_name)s"],
        "deploy": ["%(app_label)s.add_%(model_name)s"],
        "rollback": ["%(app_label)s.rollback_%(model_name)s"],
        "workers": ["%(app_label)s.view_%(model_name)s"],
        "worker_logs": ["%(app_label)s.view_%(model_name)s"],
    }

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action == "retrieve":
            qs = qs.prefetch_related(Prefetch("workers", queryset=Worker.objects.order_by("name")))
        return qs

    def get_serializer_class(self):
        return DeploymentDetailSerializer if self.action == "retrieve" else DeploymentSerializer

    @extend_schema(
        request=PlanSerializer,
        responses={
            200: OpenApiTypes.OBJECT,
            400: INVALID_400,
            422: OpenApiResponse(OpenApiTypes.OBJECT, description="Fits nowhere: per-node reasons"),
        },
    )
    @action(detail=False, methods=["post"])
    def plan(self, request):
        """Dry run: placement (or per-node refusals), rendered manifests, memory breakdown, estimated time.

        Nothing is created. Uses the stored inventory (refresh it with ``POST /clusters/{id}/collect-node-info``).
        """
        body = PlanSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = services.plan(
            body.validated_data["cluster"], body.config(), name=body.validated_data.get("name") or "preview"
        )
        return Response(outcome.as_dict(), status=200 if outcome.ok else 422)

    @extend_schema(
        request=DeploySerializer,
        responses={
            202: RUN_ACCEPTED,
            400: refusal(
                DeploymentRefused, "Refused: invalid request, values the charts refuse, or S3 keys missing"
            ),
            409: refusal(DeploymentRefused, "Refused: the cluster is not available"),
            422: refusal(
                DeploymentRefused,
                "Refused (no_fit): fits nowhere; nothing created. The answer also carries the placement report: "
                "refusals (per node), refusals_total and estimate (the memory breakdown)",
            ),
        },
    )
    @action(detail=False, methods=["post"])
    def deploy(self, request):
        """Deploy a model: 202 + the deploy run (follow it at run_url). Refused with 422 when it fits nowhere."""
        body = DeploySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        deployment, run = services.start_deploy(
            data["cluster"],
            name=data["name"],
            config=body.config(),
            credentials=body.credentials(),
            keep_on_failure=data["keep_on_failure"],
            user=request.user,
        )
        return run_accepted(run, request, deployment_id=deployment.pk, namespace=deployment.namespace)

    @extend_schema(
        request=DeploymentUpdateSerializer,
        responses={
            202: RUN_ACCEPTED,
            400: refusal(DeploymentRefused, "Refused: nothing to change"),
            409: BUSY_409,
        },
    )
    def partial_update(self, request, *args, **kwargs):
        """replicas → scale; engine_args / image → a new revision rolled out. 202 + run."""
        deployment = self.get_object()
        body = DeploymentUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.start_update(deployment, user=request.user, **body.validated_data)
        return run_accepted(run, request, deployment_id=deployment.pk)

    @extend_schema(
        request=RollbackSerializer,
        responses={
            202: RUN_ACCEPTED,
            404: refusal(DeploymentRefused, "Refused: the deployment has no such revision"),
            409: BUSY_409,
        },
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        """Re-apply a stored revision as a new revision (helm-style). 202 + run."""
        deployment = self.get_object()
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.start_rollback(deployment, body.validated_data["revision"], user=request.user)
        return run_accepted(run, request, deployment_id=deployment.pk)

    @extend_schema(
        responses={
            202: RUN_ACCEPTED,
            409: refusal(DeploymentRefused, "Refused: already being deleted, or deleted"),
        }
    )
    def destroy(self, request, *args, **kwargs):
        """Remove every object of the deployment and its namespace. 202 + run; the record stays as deleted."""
        deployment = self.get_object()
        run = services.start_delete(deployment, user=request.user)
        return run_accepted(run, request, deployment_id=deployment.pk)

    @extend_schema(responses={200: WorkerSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def workers(self, request, pk=None):
        """One row per runtime pod, as last seen by the deploy run or the health beat."""
        deployment = self.get_object()
        return Response(WorkerSerializer(deployment.workers.order_by("name"), many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("tail", OpenApiTypes.INT, description="Last N lines (default 200, max 5000)")
        ],
        responses={200: OpenApiTypes.STR, 502: OpenApiResponse(description="The cluster did not answer")},
    )
    @action(detail=True, methods=["get"], url_path=r"workers/(?P<worker_id>\d+)/logs")
    def worker_logs(self, request, pk=None, worker_id=None):
        """The pod's log, read live through the cluster gateway."""
        deployment = self.get_object()
        worker = deployment.workers.filter(pk=worker_id).first()
        if worker is None:
            raise NotFound(f"deployment {deployment.pk} has no worker {worker_id}")
        try:
            tail = max(1, min(5000, int(request.query_params.get("tail", 200))))
        except ValueError:
            raise ValidationError({"tail": "must be an integer"}) from None
        try:
            text = health.worker_logs(worker, tail_lines=tail)
        except GatewayError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        return Response({"worker": worker.name, "node": worker.node, "logs": text})
