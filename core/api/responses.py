"""The 202 answer of every endpoint that starts a run (pulpcore's OperationPostponedResponse), and the documented
shape of a refusal (``core.errors.Refused``)."""

from __future__ import annotations

import functools

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.reverse import reverse

from ..errors import Refused
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


@functools.cache
def _refusal_body(refused: type[Refused]) -> serializers.Serializer:
    # One serializer per refusal class: the schema has one component per name.
    return inline_serializer(
        refused.__name__,
        {
            "detail": serializers.CharField(help_text="Why, in words; may change between releases"),
            "code": serializers.ChoiceField(
                choices=refused.Code.choices, help_text="Stable machine-readable reason; match this"
            ),
        },
    )


def refusal(refused: type[Refused], description: str) -> OpenApiResponse:
    """The OpenAPI answer of a refusal: ``detail`` in words and ``code`` from ``refused.Code`` (one schema
    component per refusal class, named after it)."""
    return OpenApiResponse(_refusal_body(refused), description=description)
