"""``/deployments/{id}/autoscaling``: a deployment's autoscaling policy and state (``deployments/autoscaling.py``).

A sub-resource rather than more keys on ``PATCH /deployments/{id}``: that PATCH starts an update run (202), while a
policy is stored at once (200) and evaluated by the beat; mixing the two would make one request answer two ways.

* ``GET``    the policy and state (``policy`` null without one) — view permission;
* ``PUT``    set or replace the whole policy (unset optional fields take their defaults) — change permission;
* ``PATCH``  change some fields of the existing policy (404 ``no_policy`` without one) — change permission;
* ``DELETE`` remove the policy; replicas stay where they are — change permission (it changes the deployment, it
  does not delete it).

Every field is validated (``AutoscalingPolicySerializer``); unknown keys are refused (400 ``unknown_field``).
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import error_response
from core.api.query import KnownQueryParameters
from core.api.responses import error_answer, refusal
from core.permissions import ModelPermissions

from .. import autoscaling
from ..models import Deployment
from ..services import DeploymentRefused
from .serializers import AUTOSCALING_SCHEMA, AutoscalingPolicySerializer

STATE = OpenApiResponse(
    AUTOSCALING_SCHEMA,  # the same as the deployment's ``autoscaling`` field
    description="The policy and the autoscaling state",
)
GONE_409 = refusal(
    DeploymentRefused,
    "Refused: the deployment is being deleted or is deleted",
    codes=[DeploymentRefused.Code.ALREADY_DELETING, DeploymentRefused.Code.ALREADY_DELETED],
)
NO_POLICY_404 = error_answer("No such deployment, or it has no autoscaling policy", codes=["no_policy"])


class AutoscalingPermissions(ModelPermissions):
    """Reads need the view permission; setting, changing and removing a policy the change permission."""

    perms_map = {**ModelPermissions.perms_map, "DELETE": ["%(app_label)s.change_%(model_name)s"]}


def _state(deployment: Deployment) -> dict:
    return autoscaling.public_state(deployment) or {
        "policy": None,
        "conditions": [],
        "desired_replicas": None,
        "last_evaluation": None,
        "last_scale": None,
    }


def _no_policy(deployment: Deployment) -> Response:
    return error_response(
        404,
        f"deployment {deployment.name} has no autoscaling policy; set one with PUT",
        "no_policy",
    )


class DeploymentAutoscalingView(APIView):
    permission_classes = (AutoscalingPermissions, KnownQueryParameters)
    queryset = Deployment.objects.none()  # the model whose permissions apply

    def _deployment(self, pk: int) -> Deployment:
        return get_object_or_404(Deployment.objects.select_related("cluster"), pk=pk)

    @extend_schema(responses={200: STATE})
    def get(self, request, pk: int):
        """The deployment's autoscaling policy and state: the ScalingReady condition, the last evaluation's
        metric values and decision, the last scale."""
        return Response(_state(self._deployment(pk)))

    @extend_schema(
        request=AutoscalingPolicySerializer,
        responses={200: STATE, 409: GONE_409},
    )
    def put(self, request, pk: int):
        """Set or replace the policy; the autoscaling beat evaluates it from its next run on."""
        deployment = self._deployment(pk)
        body = AutoscalingPolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = autoscaling.Policy.from_dict(body.validated_data)
        return Response(_state(autoscaling.set_policy(deployment, policy, user=request.user)))

    @extend_schema(
        request=AutoscalingPolicySerializer(partial=True),
        responses={200: STATE, 404: NO_POLICY_404, 409: GONE_409},
    )
    def patch(self, request, pk: int):
        """Change some fields of the policy (the whole policy is checked again); state starts afresh."""
        deployment = self._deployment(pk)
        # Partial validation first, so that a bad or unknown key is named as sent (even without a policy); then
        # the merged policy whole (min ≤ max, the target's range for the metric).
        AutoscalingPolicySerializer(data=request.data, partial=True).is_valid(raise_exception=True)
        if not deployment.autoscaling:
            return _no_policy(deployment)
        merged = {**deployment.autoscaling, **(request.data if isinstance(request.data, dict) else {})}
        body = AutoscalingPolicySerializer(data=merged)
        body.is_valid(raise_exception=True)
        policy = autoscaling.Policy.from_dict(body.validated_data)
        return Response(_state(autoscaling.set_policy(deployment, policy, user=request.user)))

    @extend_schema(responses={204: None, 404: NO_POLICY_404})
    def delete(self, request, pk: int):
        """Remove the policy; the replicas stay as they are (set them with PATCH /deployments/{id})."""
        deployment = self._deployment(pk)
        if not autoscaling.clear_policy(deployment, user=request.user):
            return _no_policy(deployment)
        return Response(status=status.HTTP_204_NO_CONTENT)
