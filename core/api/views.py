"""Run endpoints: list, detail (steps, progress, ETA, events) and cancel."""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from .. import workflow
from ..models import Run, RunEvent, RunStep
from ..permissions import can_view
from .filters import RunFilter
from .responses import refusal, run_accepted
from .serializers import RunCancelSerializer, RunDetailSerializer, RunSerializer

# What RunSerializer reads: not the JSON the list does not show (params, accepted), nor the creator's other
# columns (password hash, timestamps) for the username it shows (tests/api/test_query_counts.py fails if a row
# needs one more query).
LIST_COLUMNS = (
    "id", "kind", "title", "subject_type", "subject_id", "status", "cancel_requested", "error", "progress", "eta",
    "created_by", "created_at", "started_at", "finished_at", "resumed_count", "subject_type__app_label",
    "subject_type__model", "created_by__username",
)  # fmt: skip


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Run.objects.select_related("subject_type", "created_by")
    filterset_class = RunFilter
    search_fields = ("kind", "title")
    ordering_fields = ("created_at", "finished_at", "status", "kind")
    permission_map = {"cancel": ["core.cancel_run"]}

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action == "list":
            qs = qs.only(*LIST_COLUMNS)
        else:
            qs = qs.prefetch_related(
                Prefetch("steps", queryset=RunStep.objects.order_by("order")),
                Prefetch("events", queryset=RunEvent.objects.order_by("id")),
            )
        return qs

    def get_serializer_class(self):
        if self.action == "list":
            return RunSerializer
        if self.action == "cancel":
            return RunCancelSerializer
        return RunDetailSerializer

    @extend_schema(
        request=RunCancelSerializer,
        responses={
            202: OpenApiResponse(
                RunDetailSerializer,
                description="Cancel requested: the run, or only run_id, run_url and status for a user without "
                "core.view_run",
            ),
            409: refusal(workflow.RunRefused, "The run has already ended"),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Ask the run to stop at its next step boundary; its cleanup steps then run. Needs core.cancel_run; the
        answer shows the run only to users who may view runs."""
        run = self.get_object()
        body = RunCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        workflow.cancel(run, reason=body.validated_data["reason"])
        if not can_view(request.user, Run):
            return run_accepted(Run.objects.only("id", "status").get(pk=run.pk), request)
        run = self.get_queryset().get(pk=run.pk)
        return Response(
            RunDetailSerializer(run, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )
