"""The audit log's answers."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import AuditEntry


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "array", "minItems": 2, "maxItems": 2, "items": {}},
        "description": "{field: [before, after]}; null before a creation and after a deletion; secrets as ***",
    }
)
class ChangesField(serializers.JSONField):
    pass


class AuditEntrySerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="audit-detail")
    actor = serializers.CharField(source="actor_name", help_text="Username, or the OS user of a command")
    changes = ChangesField()
    details = serializers.JSONField()

    class Meta:
        model = AuditEntry
        fields = (
            "id", "url", "time", "actor", "actor_id", "source", "action", "object_type", "object_id",
            "object_repr", "changes", "details", "run_id", "source_ip", "request_id", "request",
        )  # fmt: skip
        read_only_fields = fields
