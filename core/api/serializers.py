"""Serializers for runs, their steps and events; and the strictness every request serializer shares.

:class:`StrictFields` refuses keys a request serializer does not take (unknown or read-only), with 400
``unknown_field`` naming them and the keys it accepts: a typo (``replica`` for ``replicas``) or a field sent to the
wrong endpoint must not pass silently as "nothing to change". Every serializer that reads a request body or query
string derives from :class:`Serializer` / :class:`ModelSerializer` below (nested ones included, since DRF calls
each one's ``to_internal_value``); ``tests/contract`` sends an unknown key to every operation of the OpenAPI schema.

:class:`IdentityURLField` is DRF's ``HyperlinkedIdentityField`` (every answer's ``url``) without a URL resolver
walk per row: a list page of 200 rows reversed the same pattern 200 times.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

from ..models import Run, RunEvent, RunStep

# Keys a browser form adds on its own (Django's CSRF field), not part of any request's meaning.
IGNORED_FORM_KEYS = frozenset({"csrfmiddlewaretoken"})


class StrictFields:
    """Refuse keys that are not writable fields of this serializer (see the module docstring)."""

    unknown_message = "unknown field; this request takes {accepted}"
    read_only_message = "read-only field; this request takes {accepted}"

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = self.fields  # type: ignore[attr-defined]
            writable = [name for name, f in fields.items() if not f.read_only]
            accepted = ", ".join(sorted(writable)) or "no fields"
            errors = {}
            for key in data:
                if key in IGNORED_FORM_KEYS or key in writable:
                    continue
                template = self.read_only_message if key in fields else self.unknown_message
                errors[str(key)] = [
                    serializers.ErrorDetail(template.format(accepted=accepted), code="unknown_field")
                ]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]


class Serializer(StrictFields, serializers.Serializer):
    """A request serializer that refuses unknown keys."""


class ModelSerializer(StrictFields, serializers.ModelSerializer):
    """A model request serializer that refuses unknown and read-only keys."""


class NoBody(Serializer):
    """The body of an action that takes none: any key is refused."""


# Stands for the object's id while the URL pattern is reversed once per answer: digits, so that it matches the
# routers' ``[^/.]+`` and Django's ``int`` converter alike.
_ID_PLACEHOLDER = "9081726354453627189"


class IdentityURLField(serializers.HyperlinkedIdentityField):
    """The object's absolute URL, as ``HyperlinkedIdentityField`` builds it, from a template made once per answer.

    The template is the URL reversed (and made absolute by the request) with a placeholder id; each row's URL is
    the template with its id, an integer or a UUID (nothing in either needs quoting). Any other id, or a format
    suffix, goes through DRF's reverse as before."""

    def get_url(self, obj, view_name, request, format):
        value = getattr(obj, self.lookup_field, None)
        if format or request is None or not isinstance(value, int | uuid.UUID) or isinstance(value, bool):
            return super().get_url(obj, view_name, request, format)
        template = getattr(self, "_url_template", None)
        if template is None or template[0] is not request or template[1] != view_name:
            url = self.reverse(
                view_name, kwargs={self.lookup_url_kwarg: _ID_PLACEHOLDER}, request=request, format=None
            )
            head, found, tail = url.rpartition(_ID_PLACEHOLDER)
            if not found:
                return super().get_url(obj, view_name, request, format)
            template = self._url_template = (request, view_name, head, tail)
        return f"{template[2]}{value}{template[3]}"


class RunStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunStep
        fields = (
            "order", "name", "title", "phase", "status", "attempt", "progress", "message", "output",
            "eta_seconds", "started_at", "finished_at", "deadline",
        )  # fmt: skip


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ("id", "step", "status", "message", "data", "created_at")


class RunSerializer(serializers.ModelSerializer):
    url = IdentityURLField(view_name="run-detail")
    subject_type = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Run
        fields = (
            "id", "url", "kind", "title", "subject_type", "subject_id", "status", "cancel_requested", "error",
            "progress", "eta", "created_by", "created_at", "started_at", "finished_at", "resumed_count",
        )  # fmt: skip

    def get_subject_type(self, obj: Run) -> str | None:
        return f"{obj.subject_type.app_label}.{obj.subject_type.model}" if obj.subject_type_id else None


class RunDetailSerializer(RunSerializer):
    steps = RunStepSerializer(many=True, read_only=True)
    events = RunEventSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = (*RunSerializer.Meta.fields, "params", "steps", "events")


class RunCancelSerializer(Serializer):
    reason = serializers.CharField(required=False, max_length=500, default="cancelled by request")
