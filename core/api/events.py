"""``GET /events``: the outbox (``core.events``) paged forward with a stable cursor, and ``GET /events/{id}``.

A consumer keeps the ``next`` cursor of each answer and asks with ``after=<cursor>`` next time: it sees every event
exactly once, in commit order, even when transactions commit in another order than they started (see
``core.models.Event``). Filters (``type``, ``subject``) narrow the page but the cursor still moves past the events
they left out, so a filtered consumer never gets the same event twice either.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers
from rest_framework.response import Response

from .. import events
from ..models import Event
from . import serializers as strict
from .query import query_params


class EventSerializer(serializers.ModelSerializer):
    """An event in CloudEvents 1.0 JSON form."""

    specversion = serializers.SerializerMethodField()
    datacontenttype = serializers.SerializerMethodField()
    time = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data")

    def get_specversion(self, obj: Event) -> str:
        return "1.0"

    def get_datacontenttype(self, obj: Event) -> str:
        return "application/json"

    def get_time(self, obj: Event) -> str:
        return obj.cloudevent()["time"]


class EventQuery(strict.Serializer):
    after = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="The `next` cursor of the previous answer; empty or absent: from the oldest event kept",
    )
    type = serializers.CharField(
        required=False,
        help_text="Comma-separated event types; a trailing `.*` matches a prefix (io.bud.deployment.*)",
    )
    subject = serializers.CharField(required=False, max_length=200, help_text="e.g. clusters/12")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)

    def validate_after(self, value: str) -> int:
        if not value:
            return 0
        if not value.isdigit() or len(value) > 19:
            raise serializers.ValidationError("not a cursor this API gave out (use the `next` of an answer)")
        return int(value)

    def validate_type(self, value: str) -> list[str]:
        try:
            types = events.check_types(value.split(","))
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        if not types:
            raise serializers.ValidationError("name at least one event type (e.g. io.bud.run.*)")
        return types


EventPage = inline_serializer(
    "EventPage",
    {
        "events": EventSerializer(many=True),
        "next": serializers.CharField(help_text="Ask with after=<next> for the events after this page"),
        "has_more": serializers.BooleanField(
            help_text="True when the page is full: more may be waiting, ask again at once"
        ),
    },
)


class EventList(generics.GenericAPIView):
    """``GET /events``: a plain view, not a list action, because it answers one cursor page (not the
    limit/offset pages of the other lists)."""

    queryset = Event.objects.all()
    serializer_class = EventSerializer
    pagination_class = None
    filter_backends: list = []
    query_serializers = {"get": EventQuery}

    @extend_schema(operation_id="events_list", responses={200: EventPage})
    def get(self, request, *args, **kwargs):
        """Events after the cursor, oldest first (cluster, inventory, deployment, worker, run, benchmark,
        provisioning and webhook state changes; README "Events and webhooks")."""
        params = query_params(self, request)
        limit = params.get("limit", 100)
        page, cursor = events.page(
            after=params.get("after", 0),
            limit=limit,
            types=params.get("type"),
            subject=params.get("subject", ""),
        )
        return Response(
            {
                "events": EventSerializer(page, many=True).data,
                "next": str(cursor),
                "has_more": len(page) == limit,
            }
        )


class EventDetail(generics.RetrieveAPIView):
    """``GET /events/{id}``: one event by its CloudEvents id."""

    queryset = Event.objects.all()
    serializer_class = EventSerializer
    lookup_field = "id"

    @extend_schema(operation_id="events_retrieve")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
