from django.urls import path
from rest_framework.routers import SimpleRouter

from .autoscaling import DeploymentAutoscalingView
from .benchmarks import BenchmarkViewSet, DeploymentBenchmarkView
from .views import DeploymentViewSet

router = SimpleRouter(trailing_slash=False)
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("benchmarks", BenchmarkViewSet, basename="benchmark")

urlpatterns = [
    path("deployments/<int:pk>/benchmark", DeploymentBenchmarkView.as_view(), name="deployment-benchmark"),
    path(
        "deployments/<int:pk>/autoscaling", DeploymentAutoscalingView.as_view(), name="deployment-autoscaling"
    ),
    *router.urls,
]
