"""The 202 answer of every endpoint that starts a run (pulpcore's OperationPostponedResponse)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.reverse import reverse

from ..models import Run


class RunAcceptedSerializer(serializers.Serializer):
    run_id = serializers.UUIDField()
    run_url = serializers.URLField()
    status = serializers.CharField()


RUN_ACCEPTED = OpenApiResponse(RunAcceptedSerializer, description="Accepted: follow the run at run_url")


def run_accepted(run: Run, request, **extra) -> Response:
    url = reverse("run-detail", kwargs={"pk": run.pk}, request=request)
    body = {"run_id": str(run.pk), "run_url": url, "status": run.status, **extra}
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": url})
