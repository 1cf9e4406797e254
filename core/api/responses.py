"""The 202 answer of every endpoint that starts a run (pulpcore's OperationPostponedResponse), and the documented
shape of an error answer (``core.api.errors``).

``refusal(SomeRefused, "when")`` documents an error answer whose ``code`` may be one of ``SomeRefused.Code``
(besides the generic codes of its status, which ``core.api.schema.AutoSchema`` adds); ``error_answer`` documents
one with explicit codes and, optionally, the extra fields its body carries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.reverse import reverse

from ..errors import Refused
from ..models import Run
from .schema import REFUSAL_CODES_KEY


class RunAcceptedSerializer(serializers.Serializer):
    run_id = serializers.UUIDField()
    run_url = serializers.URLField()
    status = serializers.CharField()


RUN_ACCEPTED = OpenApiResponse(RunAcceptedSerializer, description="Accepted: follow the run at run_url")


def run_accepted(run: Run, request, **extra) -> Response:
    url = reverse("run-detail", kwargs={"pk": run.pk}, request=request)
    body = {"run_id": str(run.pk), "run_url": url, "status": run.status, **extra}
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": url})


class ErrorSerializer(serializers.Serializer):
    """Every 4xx and 5xx answer of the API. Refusals may add fields (e.g. ``limit``, ``refusals``,
    ``retry_after``)."""

    detail = serializers.CharField(
        help_text="What is wrong and what to do, in words; may change between releases"
    )
    code = serializers.CharField(help_text="Stable machine-readable reason; match this, not the words")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation errors only: messages per field path (nested fields joined by dots, e.g. "
        "s3.endpoint; non_field_errors for the body as a whole)",
    )

    class Meta:
        ref_name = "Error"


def error_answer(
    description: str, codes: Iterable[str] = (), schema: dict[str, Any] | None = None
) -> OpenApiResponse:
    """An error answer that may carry ``codes`` (besides its status's generic ones) and the extra fields of
    ``schema`` (a JSON schema object)."""
    body: dict[str, Any] = dict(schema or {"type": "object"})
    body[REFUSAL_CODES_KEY] = sorted(codes)
    return OpenApiResponse(body, description=description)


def refusal(refused: type[Refused], description: str, codes: Iterable[str] | None = None) -> OpenApiResponse:
    """An answer refused by a service: ``code`` is one of ``refused.Code`` (or the subset ``codes``)."""
    return error_answer(description, codes if codes is not None else refused.Code.values)
