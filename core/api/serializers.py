"""Serializers for runs, their steps and events."""

from __future__ import annotations

from rest_framework import serializers

from ..models import Run, RunEvent, RunStep


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
    url = serializers.HyperlinkedIdentityField(view_name="run-detail")
    subject_type = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

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


class RunCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, max_length=500, default="cancelled by request")
