from django.urls import path
from rest_framework.routers import SimpleRouter

from .events import EventDetail, EventList
from .views import RunViewSet

router = SimpleRouter(trailing_slash=False)
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("events", EventList.as_view(), name="event-list"),
    path("events/<uuid:id>", EventDetail.as_view(), name="event-detail"),
    *router.urls,
]
