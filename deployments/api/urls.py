from django.urls import path
from rest_framework.routers import SimpleRouter

from .benchmarks import BenchmarkViewSet, DeploymentBenchmarkView
from .views import DeploymentViewSet

router = SimpleRouter(trailing_slash=False)
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("benchmarks", BenchmarkViewSet, basename="benchmark")

urlpatterns = [
    path("deployments/<int:pk>/benchmark", DeploymentBenchmarkView.as_view(), name="deployment-benchmark"),
    *router.urls,
]
