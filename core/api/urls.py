from rest_framework.routers import SimpleRouter

from .views import RunViewSet

router = SimpleRouter(trailing_slash=False)
router.register("runs", RunViewSet, basename="run")

urlpatterns = router.urls
