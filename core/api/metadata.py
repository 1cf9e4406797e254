"""``OPTIONS`` answers: DRF's metadata, also for views that take no body.

DRF describes the POST/PUT body of a view from its serializer and fails (500) on a view that has none, such as an
action answering 202 to a bodiless POST (``/runs/{id}/approve``). Those views describe no body.
"""

from __future__ import annotations

from rest_framework.metadata import SimpleMetadata


def _has_serializer(view) -> bool:
    try:
        return view.get_serializer_class() is not None
    except AssertionError:  # GenericAPIView's "should either include a serializer_class attribute"
        return False


class Metadata(SimpleMetadata):
    def determine_actions(self, request, view) -> dict:
        if not _has_serializer(view):
            return {}
        return super().determine_actions(request, view)
