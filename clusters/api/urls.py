from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import ClusterViewSet, PublicKeyView

router = SimpleRouter(trailing_slash=False)
router.register("clusters", ClusterViewSet, basename="cluster")

urlpatterns = [path("crypto/public-key", PublicKeyView.as_view(), name="crypto-public-key"), *router.urls]
