from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import CloudCredentialViewSet, ProvisionViewSet, RunApprovalViewSet

router = SimpleRouter(trailing_slash=False)
router.register("credentials", CloudCredentialViewSet, basename="credential")

urlpatterns = [
    path(
        "clusters/provision",
        ProvisionViewSet.as_view({"post": "create_and_provision"}),
        name="cluster-create-and-provision",
    ),
    path(
        "clusters/<int:pk>/provision",
        ProvisionViewSet.as_view({"post": "provision", "get": "show"}),
        name="cluster-provision",
    ),
    path("runs/<uuid:pk>/approve", RunApprovalViewSet.as_view({"post": "approve"}), name="run-approve"),
    *router.urls,
]
