"""Provisioning endpoints: cloud credentials, provisioning a cluster, approving a run's plan.

Paths (``provisioning.api.urls`` is included before the clusters' URLs, so these fixed paths win):

* ``POST/GET /credentials``, ``GET/DELETE /credentials/{id}`` — secrets are accepted, never returned;
* ``POST /clusters/provision`` — create the cluster record and provision it (202 + run);
* ``POST /clusters/{id}/provision`` — provision a record created without a kubeconfig (202 + run);
  ``GET`` shows its provisioning (spec, status, plan summary, outputs; never secrets);
* ``POST /runs/{id}/approve`` — approve the plan of a run waiting for it (``core.approve_run``).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from clusters.models import Cluster
from core.api.responses import RUN_ACCEPTED, run_accepted
from core.fields import raw_token
from core.models import Run

from .. import services
from ..models import CloudCredential, Provisioning
from .serializers import (
    CloudCredentialCreateSerializer,
    CloudCredentialSerializer,
    CreateAndProvisionSerializer,
    ProvisioningSerializer,
    ProvisionSerializer,
)


def _refused(exc: services.ProvisioningRefused) -> Response:
    return Response({"detail": str(exc)}, status=exc.status)


class CloudCredentialViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    # The secret column is never decrypted for the API: only its raw token is read, to say which key holds it.
    queryset = CloudCredential.objects.defer("secret").annotate(secret_token=raw_token("secret"))
    serializer_class = CloudCredentialSerializer
    filterset_fields = ("provider",)
    search_fields = ("name",)
    ordering_fields = ("name", "created_at")

    def get_serializer_class(self):
        return CloudCredentialCreateSerializer if self.action == "create" else CloudCredentialSerializer

    @extend_schema(request=CloudCredentialCreateSerializer, responses={201: CloudCredentialSerializer})
    def create(self, request):
        """Store a cloud credential (secrets encrypted; they are never returned)."""
        body = CloudCredentialCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            credential = services.create_credential(
                name=data["name"],
                provider=data["provider"],
                secret=body.validated_secret(),
                region=data["region"],
                tenant_id=data["tenant_id"],
                subscription_id=data["subscription_id"],
                description=data["description"],
                user=request.user,
            )
        except services.ProvisioningRefused as exc:
            return _refused(exc)
        fresh = self.get_queryset().get(pk=credential.pk)
        return Response(CloudCredentialSerializer(fresh).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="Still needed by a cluster")})
    def destroy(self, request, *args, **kwargs):
        credential = CloudCredential.objects.get(pk=self.get_object().pk)
        try:
            services.delete_credential(credential)
        except services.ProvisioningRefused as exc:
            return _refused(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProvisionViewSet(viewsets.GenericViewSet):
    queryset = Provisioning.objects.select_related("credential", "approved_by")
    serializer_class = ProvisioningSerializer
    permission_map = {
        "create_and_provision": ["clusters.add_cluster", "provisioning.add_provisioning"],
        "provision": ["provisioning.add_provisioning"],
        "show": ["provisioning.view_provisioning"],
    }

    def _start(self, request, data: dict, cluster: Cluster | None) -> Response:
        credential = CloudCredential.objects.filter(pk=data["credential_id"]).first()
        if credential is None:
            return Response({"detail": f"no cloud credential {data['credential_id']}"}, status=404)
        spec = {
            "provider": data["provider"],
            "region": data["region"],
            "kubernetes_version": data["kubernetes_version"],
            "node_pools": data["node_pools"],
            "credential": credential,
            "auto_approve": data["auto_approve"],
        }
        try:
            if cluster is None:
                provisioning, run = services.create_and_provision(
                    name=data["name"], user=request.user, **spec
                )
            else:
                provisioning, run = services.start_provisioning(cluster, user=request.user, **spec)
        except services.ProvisioningRefused as exc:
            return _refused(exc)
        return run_accepted(run, request, cluster_id=provisioning.cluster_id)

    @extend_schema(
        request=CreateAndProvisionSerializer, responses={202: RUN_ACCEPTED, 409: OpenApiResponse()}
    )
    def create_and_provision(self, request):
        """Create a cluster record and provision it (Terraform), then register it: one run."""
        body = CreateAndProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._start(request, body.validated_data, None)

    @extend_schema(
        operation_id="clusters_provision",
        request=ProvisionSerializer,
        responses={202: RUN_ACCEPTED, 409: OpenApiResponse()},
    )
    def provision(self, request, pk=None):
        """Provision a cluster record created without a kubeconfig (status provisioning)."""
        cluster = get_object_or_404(Cluster.objects.defer("kubeconfig"), pk=pk)
        body = ProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._start(request, body.validated_data, Cluster.objects.get(pk=cluster.pk))

    @extend_schema(operation_id="clusters_provisioning_retrieve", responses={200: ProvisioningSerializer})
    def show(self, request, pk=None):
        """How the cluster was provisioned: spec, status, plan summary, non-sensitive outputs."""
        provisioning = get_object_or_404(self.get_queryset(), cluster_id=pk)
        return Response(ProvisioningSerializer(provisioning).data)


class RunApprovalViewSet(viewsets.GenericViewSet):
    queryset = Run.objects.all()
    permission_map = {"approve": ["core.approve_run"]}

    @extend_schema(
        request=None,
        responses={
            202: RUN_ACCEPTED,
            404: OpenApiResponse(description="Not a provisioning run"),
            409: OpenApiResponse(description="Not waiting for approval"),
        },
    )
    def approve(self, request, pk=None):
        """Approve the Terraform plan of a provisioning run; apply starts right away."""
        run = get_object_or_404(Run, pk=pk)
        try:
            provisioning = services.approve(run, request.user)
        except services.ProvisioningRefused as exc:
            return _refused(exc)
        run.refresh_from_db()
        return run_accepted(
            run,
            request,
            cluster_id=provisioning.cluster_id,
            approved_by=getattr(provisioning.approved_by, "username", None),
            approved_at=provisioning.approved_at,
        )
