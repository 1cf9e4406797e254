"""Provisioning endpoints: cloud credentials, provisioning a cluster, approving a run's plan.

Paths (``provisioning.api.urls`` is included before the clusters' URLs, so these fixed paths win):

* ``POST/GET /credentials``, ``GET/PATCH/DELETE /credentials/{id}`` — secrets are accepted (``PATCH`` rotates
  them), never returned;
* ``POST /clusters/provision`` — create the cluster record and provision it (202 + run);
* ``POST /clusters/{id}/provision`` — provision a record created without a kubeconfig (202 + run);
  ``GET`` shows its provisioning (spec, status, plan summary, outputs; never secrets);
* ``POST /runs/{id}/approve`` — approve the plan of a run waiting for it (``core.approve_run`` and
  ``provisioning.view_provisioning``; not by the user who requested it, see ``services.approve``).

The views only read the request and answer: every rule (which credential, whether the cluster may be
provisioned, whether the run waits for approval) is in ``provisioning.services``, whose refusals
(``ProvisioningRefused``, with a stable ``code``) core's exception handler answers.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from clusters.models import Cluster
from core.api.idempotency import IDEMPOTENCY_KEY, start_once
from core.api.responses import RUN_ACCEPTED, refusal, run_accepted
from core.api.serializers import NoBody
from core.fields import raw_token
from core.models import Run
from core.permissions import can_view

from .. import services
from ..models import CloudCredential, Provisioning
from ..services import ProvisioningRefused
from .serializers import (
    CloudCredentialCreateSerializer,
    CloudCredentialSerializer,
    CloudCredentialUpdateSerializer,
    CreateAndProvisionSerializer,
    ProvisioningSerializer,
    ProvisionSerializer,
)

START_REFUSALS = {
    400: refusal(
        ProvisioningRefused, "Bad request: provider, credential, name, node pools or module variables"
    ),
    404: refusal(ProvisioningRefused, "No cloud credential with credential_id"),
    409: refusal(ProvisioningRefused, "Name taken, or the cluster cannot be provisioned now"),
}


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
        if self.action == "create":
            return CloudCredentialCreateSerializer
        if self.action == "partial_update":
            return CloudCredentialUpdateSerializer
        return CloudCredentialSerializer

    @extend_schema(
        request=CloudCredentialCreateSerializer,
        responses={
            201: CloudCredentialSerializer,
            400: refusal(ProvisioningRefused, "Fields missing or not taken by the provider"),
            409: refusal(ProvisioningRefused, "A credential with this name exists"),
        },
    )
    def create(self, request):
        """Store a cloud credential (secrets encrypted; they are never returned). Without the view permission the
        answer is ``{id, name}`` only."""
        body = CloudCredentialCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
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
        if not can_view(request.user, CloudCredential):  # no view permission: the identifiers only
            return Response({"id": credential.pk, "name": credential.name}, status=status.HTTP_201_CREATED)
        fresh = self.get_queryset().get(pk=credential.pk)
        return Response(CloudCredentialSerializer(fresh).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=CloudCredentialUpdateSerializer,
        responses={
            200: CloudCredentialSerializer,
            400: refusal(ProvisioningRefused, "Fields missing or not taken by the provider"),
            409: refusal(ProvisioningRefused, "A credential with this name exists"),
        },
    )
    def partial_update(self, request, *args, **kwargs):
        """Change a credential or rotate its secret: secret fields given replace the stored ones (``null`` removes
        an optional one), with the same checks as on creation; they are never returned. Without the view
        permission the answer is ``{id, name}`` only."""
        credential = CloudCredential.objects.get(pk=self.get_object().pk)
        body = CloudCredentialUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.update_credential(credential, secret=body.secret(credential.secret or {}), **body.changes())
        if not can_view(request.user, CloudCredential):
            return Response({"id": credential.pk, "name": credential.name})
        return Response(CloudCredentialSerializer(self.get_queryset().get(pk=credential.pk)).data)

    @extend_schema(responses={204: None, 409: refusal(ProvisioningRefused, "Still needed by a cluster")})
    def destroy(self, request, *args, **kwargs):
        services.delete_credential(CloudCredential.objects.get(pk=self.get_object().pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProvisionViewSet(viewsets.GenericViewSet):
    queryset = Provisioning.objects.select_related("credential", "approved_by")
    serializer_class = ProvisioningSerializer
    permission_map = {
        "create_and_provision": ["clusters.add_cluster", "provisioning.add_provisioning"],
        "provision": ["provisioning.add_provisioning"],
        "show": ["provisioning.view_provisioning"],
    }

    @extend_schema(
        request=CreateAndProvisionSerializer,
        responses={202: RUN_ACCEPTED, **START_REFUSALS},
        parameters=[IDEMPOTENCY_KEY],
    )
    def create_and_provision(self, request):
        """Create a cluster record and provision it (Terraform), then register it: one run."""
        body = CreateAndProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)

        def start():
            provisioning, run = services.create_and_provision(
                credential=data.pop("credential_id"), user=request.user, **data
            )
            return run, {"cluster_id": provisioning.cluster_id}

        return start_once(request, services.PROVISION_KIND, start)

    @extend_schema(
        operation_id="clusters_provision",
        request=ProvisionSerializer,
        responses={202: RUN_ACCEPTED, **START_REFUSALS},
        parameters=[IDEMPOTENCY_KEY],
    )
    def provision(self, request, pk=None):
        """Provision a cluster record created without a kubeconfig (status provisioning)."""
        cluster = get_object_or_404(Cluster.objects.defer("kubeconfig"), pk=pk)
        body = ProvisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)

        def start():
            provisioning, run = services.start_provisioning(
                cluster, credential=data.pop("credential_id"), user=request.user, **data
            )
            return run, {"cluster_id": provisioning.cluster_id}

        return start_once(request, services.PROVISION_KIND, start)

    @extend_schema(operation_id="clusters_provisioning_retrieve", responses={200: ProvisioningSerializer})
    def show(self, request, pk=None):
        """How the cluster was provisioned: spec, status, plan summary, non-sensitive outputs."""
        provisioning = get_object_or_404(self.get_queryset(), cluster_id=pk)
        return Response(ProvisioningSerializer(provisioning).data)


class RunApprovalViewSet(viewsets.GenericViewSet):
    queryset = Run.objects.all()
    # Checked before the run is looked up; services.approve checks them again and refuses self-approval.
    permission_map = {"approve": list(services.APPROVE_PERMISSIONS)}

    @extend_schema(
        request=None,
        responses={
            202: RUN_ACCEPTED,
            403: refusal(
                ProvisioningRefused,
                "Refused (self_approval): the requester of the run may not approve it "
                "(PROVISIONING_APPROVER_MUST_DIFFER); or the approve_run / view_provisioning permission is missing",
            ),
            409: refusal(
                ProvisioningRefused,
                "Not waiting for approval: not a provisioning run, ended, auto-approved, no plan yet",
            ),
        },
    )
    def approve(self, request, pk=None):
        """Approve the Terraform plan of a provisioning run; apply starts right away. Takes no body."""
        NoBody(data=request.data).is_valid(raise_exception=True)
        run = get_object_or_404(Run, pk=pk)
        provisioning = services.approve(run, request.user)
        run.refresh_from_db()
        return run_accepted(
            run,
            request,
            cluster_id=provisioning.cluster_id,
            approved_by=getattr(provisioning.approved_by, "username", None),
            approved_at=provisioning.approved_at,
        )
