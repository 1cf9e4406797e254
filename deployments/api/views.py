"""Deployment endpoints (the original service's paths first): plan, deploy, list, detail, update, rollback, delete,
workers and their logs.

Views parse the request and call one service function each; a refusal (``services.DeploymentRefused``) is
answered by the API's exception handler with its status and ``{"detail", "code", ...}``.
"""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from core.api.errors import error_body
from core.api.idempotency import IDEMPOTENCY_KEY, start_once
from core.api.query import query_params
from core.api.responses import RUN_ACCEPTED, error_answer, refusal, run_accepted
from core.gateway import GatewayError

from .. import health, services
from ..models import Deployment, Worker
from ..services import DeploymentRefused
from .filters import DeploymentFilter
from .serializers import (
    DeployAcceptedSerializer,
    DeploymentDetailSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    DeploySerializer,
    PlanSerializer,
    RollbackSerializer,
    WorkerLogsQuery,
    WorkerSerializer,
)

Code = DeploymentRefused.Code
INVALID_400 = refusal(
    DeploymentRefused,
    "Refused: invalid request (model, dtype, context, ...), or values the charts refuse",
    codes=[Code.INVALID_REQUEST, Code.CHART_REJECTED],
)
BUSY_CODES = [Code.NOT_RUNNING, Code.NO_RUNTIME, Code.RUN_IN_PROGRESS]
BUSY_409 = refusal(
    DeploymentRefused,
    "Refused: not running yet, no installed runtime, or another run in progress",
    codes=BUSY_CODES,
)
PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "feasible": {"type": "boolean"},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "What may make the plan differ from a deploy: e.g. the cluster is not available, so "
            "the stored inventory may be stale and a deploy would be refused",
        },
    },
    "required": ["feasible", "warnings"],
}
# The fleet plan (a body without ``cluster``) answers the single-cluster shape for the best cluster plus these.
FLEET_CANDIDATE_SCHEMA = {
    "type": "object",
    "description": "A cluster's best placement: the fields of `placement`, plus its rank, cluster and the memory "
    "breakdown of its layout",
    "properties": {
        "rank": {"type": "integer"},
        "cluster": {"type": "integer"},
        "cluster_name": {"type": "string"},
        "device_type": {"type": "string"},
        "accelerator_model": {"type": "string"},
        "tensor_parallel_size": {"type": "integer"},
        "replicas": {"type": "integer"},
        "node": {"type": "string"},
        "nodes": {"type": "array", "items": {"type": "string"}},
        "memory_per_device_bytes": {"type": "integer"},
        "usable_memory_per_device_bytes": {"type": "integer"},
        "headroom": {"type": "number"},
        "summary": {"type": "string"},
        "memory": {
            "type": "object",
            "description": "weights, KV cache, overhead, per device and total, in bytes and GiB",
        },
    },
    "required": ["rank", "cluster", "cluster_name", "device_type", "tensor_parallel_size", "node", "memory"],
}
REFUSED_CLUSTER_SCHEMA = {
    "type": "object",
    "properties": {
        "cluster": {"type": "integer"},
        "cluster_name": {"type": "string"},
        "status": {"type": "string"},
        "reason": {
            "type": "string",
            "description": "Why the cluster cannot take the deployment, in one sentence",
        },
        "refusals": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The first per-node reasons (node: reason)",
        },
        "refusals_total": {"type": "integer"},
    },
    "required": ["cluster", "cluster_name", "status", "reason", "refusals", "refusals_total"],
}
FLEET_SCHEMA = {
    "type": "object",
    "description": "Only when the request named no cluster: every cluster considered, the available ones ranked "
    "by their best placement (best first; the first is the one planned in full above and the one a deploy "
    "without cluster takes), and why each other cluster refuses",
    "properties": {
        "clusters_total": {"type": "integer"},
        "clusters_planned": {"type": "integer", "description": "Available clusters, whose inventory was planned on"},
        "candidates": {"type": "array", "items": FLEET_CANDIDATE_SCHEMA, "description": "The first 20"},
        "candidates_total": {"type": "integer"},
        "refused_clusters": {"type": "array", "items": REFUSED_CLUSTER_SCHEMA, "description": "The first 200"},
        "refused_clusters_total": {"type": "integer"},
    },
    "required": [
        "clusters_total", "clusters_planned", "candidates", "candidates_total", "refused_clusters",
        "refused_clusters_total",
    ],
}  # fmt: skip
PLAN_SCHEMA["properties"].update(
    cluster={"type": "integer", "description": "Fleet plan only: the cluster planned in full (the best)"},
    cluster_name={"type": "string", "description": "Fleet plan only: its name"},
    fleet=FLEET_SCHEMA,
)
# What a deploy refused with 422 carries besides detail and code.
DEPLOY_REFUSAL_SCHEMA = {
    "type": "object",
    "properties": {
        "refusals": {"type": "array", "items": {"type": "string"}},
        "refusals_total": {"type": "integer"},
        "estimate": {"type": "object"},
        "fleet": FLEET_SCHEMA,
    },
}
# The codes of a cluster call that failed (core.gateway's error reasons).
GATEWAY_CODES = [
    f"cluster_{reason}"
    for reason in ("unreachable", "unauthorized", "forbidden", "not_found", "conflict", "invalid", "error")
]
LOGS_SCHEMA = inline_serializer(
    "WorkerLogs",
    {
        "worker": serializers.CharField(help_text="Pod name"),
        "node": serializers.CharField(help_text="Node the pod runs on"),
        "logs": serializers.CharField(help_text="The last `tail` lines of the pod's log"),
    },
)


# What DeploymentSerializer reads: its model fields, the autoscaling policy and state, the cluster's name and the
# release's revision (tests/api/test_query_counts.py fails if a row needs one more query).
LIST_COLUMNS = (
    "id", "name", "cluster", "namespace", "model_name", "device_type", "engine", "replicas", "ready_replicas",
    "engine_args", "image", "endpoint_url", "status", "reason", "release", "autoscaling", "autoscaling_state",
    "last_checked", "created_at", "updated_at", "cluster__name", "release__current_revision",
)  # fmt: skip


class DeploymentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    queryset = Deployment.objects.select_related("cluster", "release").defer(
        "credentials", "cluster__kubeconfig"
    )
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter
    search_fields = ("name", "model_name", "namespace")
    ordering_fields = ("created_at", "name", "status", "updated_at")
    permission_map = {
        "plan": ["%(app_label)s.view_%(model_name)s"],
        "deploy": ["%(app_label)s.add_%(model_name)s"],
        "rollback": ["%(app_label)s.rollback_%(model_name)s"],
        "workers": ["%(app_label)s.view_%(model_name)s"],
        "worker_logs": ["%(app_label)s.view_%(model_name)s"],
    }
    query_serializers = {"worker_logs": WorkerLogsQuery}
    paged_actions = ("workers",)

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action == "retrieve":
            qs = qs.prefetch_related(Prefetch("workers", queryset=Worker.objects.order_by("name")))
        elif self.action == "list":
            # Only the columns the list shows: the JSON it does not show (spec, config, placement) and the cluster's
            # and release's other columns (timestamps parsed, model fields set for every row of a page) were over
            # half of the list's time (benchmarks/api_load.py, "where the time goes").
            qs = qs.only(*LIST_COLUMNS)
        return qs

    def get_serializer_class(self):
        return DeploymentDetailSerializer if self.action == "retrieve" else DeploymentSerializer

    @extend_schema(
        request=PlanSerializer,
        responses={
            200: PLAN_SCHEMA,
            400: INVALID_400,
            422: error_answer(
                "Fits nowhere (no_fit): per-node reasons in refusals, the memory breakdown in estimate; a fleet "
                "plan adds fleet (each cluster's reason) and names nodes cluster/node. No cluster is available "
                "for a fleet plan (no_cluster): fleet says why for each",
                codes=[Code.NO_FIT, Code.NO_CLUSTER],
                schema=PLAN_SCHEMA,
            ),
        },
    )
    @action(detail=False, methods=["post"])
    def plan(self, request):
        """Dry run: placement (or per-node refusals), rendered manifests, memory breakdown, estimated time.

        Nothing is created. Uses the stored inventory (refresh it with ``POST /clusters/{id}/collect-node-info``);
        ``warnings`` says when that may mislead (the cluster is not available). Without ``cluster``, every available
        cluster is planned on: the answer is the plan of the best one, plus ``cluster``, ``cluster_name`` and
        ``fleet`` (the clusters ranked by their best placement, and why each other one refuses).
        """
        body = PlanSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        config = {**body.config(), "_has_credentials": {k: True for k in body.credentials()}}
        cluster = body.validated_data.get("cluster")
        name = body.validated_data.get("name") or "preview"
        if cluster is None:
            outcome = services.plan_fleet(config, name=name)
        else:
            outcome = services.plan(cluster, config, name=name)
        answer = outcome.as_dict()
        if outcome.ok:
            return Response(answer)
        # Fits nowhere: an error answer (detail, code) that keeps the whole placement report.
        return Response(
            {**error_body(answer.pop("detail", "fits nowhere"), Code.NO_FIT), **answer},
            status=422,
        )

    @extend_schema(
        request=DeploySerializer,
        responses={
            202: OpenApiResponse(
                DeployAcceptedSerializer,
                description="Accepted: follow the run at run_url. Without cluster in the request: cluster and "
                "cluster_name say which cluster the fleet plan chose",
            ),
            400: refusal(
                DeploymentRefused,
                "Refused: invalid request, values the charts refuse, or S3 keys missing",
                codes=[Code.INVALID_REQUEST, Code.CHART_REJECTED, Code.INVALID_SOURCE],
            ),
            409: refusal(
                DeploymentRefused,
                "Refused: the cluster is not available, or a live deployment on it has this name",
                codes=[Code.CLUSTER_UNAVAILABLE, Code.NAME_TAKEN],
            ),
            422: error_answer(
                "Refused (no_fit): fits nowhere; nothing created. The answer also carries the placement report: "
                "refusals (per node), refusals_total and estimate (the memory breakdown); without cluster in the "
                "request, fleet too (each cluster's reason). No cluster available for a request without cluster: "
                "no_cluster",
                codes=[Code.NO_FIT, Code.NO_CLUSTER],
                schema=DEPLOY_REFUSAL_SCHEMA,
            ),
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    @action(detail=False, methods=["post"])
    def deploy(self, request):
        """Deploy a model: 202 + the deploy run (follow it at run_url). Refused with 422 when it fits nowhere.

        Without ``cluster``, the best cluster of the fleet plan is taken (``cluster`` and ``cluster_name`` in the
        answer); clusters with a live deployment of this name are left out."""
        body = DeploySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data

        def start():
            arguments = {
                "name": data["name"],
                "config": body.config(),
                "credentials": body.credentials(),
                "keep_on_failure": data["keep_on_failure"],
                "user": request.user,
            }
            if data.get("cluster") is None:
                deployment, run = services.start_fleet_deploy(**arguments)
                chosen = {"cluster": deployment.cluster_id, "cluster_name": deployment.cluster.name}
            else:
                deployment, run = services.start_deploy(data["cluster"], **arguments)
                chosen = {}
            return run, {"deployment_id": deployment.pk, "namespace": deployment.namespace, **chosen}

        return start_once(request, "deployment.deploy", start)

    @extend_schema(
        request=DeploymentUpdateSerializer,
        responses={
            202: RUN_ACCEPTED,
            400: refusal(DeploymentRefused, "Refused: nothing to change", codes=[Code.NOTHING_TO_CHANGE]),
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
            409: refusal(
                DeploymentRefused,
                "Refused: the deployment has no such revision, is not running yet, has no installed runtime, or "
                "has another run in progress",
                codes=[Code.NO_SUCH_REVISION, *BUSY_CODES],
            ),
        },
        parameters=[IDEMPOTENCY_KEY],
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        """Re-apply a stored revision as a new revision (helm-style). 202 + run."""
        deployment = self.get_object()
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return start_once(
            request,
            "deployment.rollback",
            lambda: (
                services.start_rollback(deployment, body.validated_data["revision"], user=request.user),
                {"deployment_id": deployment.pk},
            ),
        )

    @extend_schema(
        responses={
            202: RUN_ACCEPTED,
            409: refusal(
                DeploymentRefused,
                "Refused: already being deleted, or deleted",
                codes=[Code.ALREADY_DELETING, Code.ALREADY_DELETED],
            ),
        }
    )
    def destroy(self, request, *args, **kwargs):
        """Remove every object of the deployment and its namespace. 202 + run; the record stays as deleted."""
        deployment = self.get_object()
        run = services.start_delete(deployment, user=request.user)
        return run_accepted(run, request, deployment_id=deployment.pk)

    # A page of workers (one per pod: a deployment may run many replicas); no deployment filters apply.
    @extend_schema(responses={200: WorkerSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def workers(self, request, pk=None):
        """One row per runtime pod, as last seen by the deploy run or the health beat (paginated)."""
        deployment = self.get_object()
        page = self.paginate_queryset(deployment.workers.order_by("name", "id"))
        return self.get_paginated_response(WorkerSerializer(page, many=True).data)

    @extend_schema(
        responses={
            200: LOGS_SCHEMA,
            502: error_answer(
                "The cluster did not answer or refused the read: code cluster_<reason> (unreachable, "
                "unauthorized, forbidden, not_found, invalid, ...)",
                codes=GATEWAY_CODES,
            ),
        },
    )
    @action(detail=True, methods=["get"], url_path=r"workers/(?P<worker_id>\d+)/logs")
    def worker_logs(self, request, pk=None, worker_id=None):
        """The pod's log, read live through the cluster gateway."""
        deployment = self.get_object()
        tail = query_params(self, request)["tail"]
        worker = deployment.workers.filter(pk=worker_id).first() if len(worker_id) < 19 else None
        if worker is None:
            raise NotFound(f"deployment {deployment.pk} has no worker {worker_id}")
        try:
            text = health.worker_logs(worker, tail_lines=tail)
        except GatewayError as exc:
            return Response(error_body(str(exc), f"cluster_{exc.reason}"), status=status.HTTP_502_BAD_GATEWAY)
        return Response({"worker": worker.name, "node": worker.node, "logs": text})
