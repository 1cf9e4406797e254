"""Setting, changing and clearing a deployment's autoscaling policy through ``/deployments/{id}/autoscaling``: strict
validation with clear 4xx answers, permissions, the state on the deployment (API and admin), the events."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from deployments.choices import DeploymentStatus
from deployments.models import DeploymentEvent
from tests.contract.conftest import running_deployment, unreachable_cluster

pytestmark = pytest.mark.django_db

POLICY = {"min_replicas": 1, "max_replicas": 3, "metric": "waiting_requests", "target": 2}


@pytest.fixture
def deployment(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    return running_deployment(unreachable_cluster("c1"))


def url(deployment) -> str:
    return f"/deployments/{deployment.pk}/autoscaling"


def test_set_read_change_and_clear_a_policy(api, deployment):
    assert api.get(url(deployment)).json()["policy"] is None
    assert api.get(f"/deployments/{deployment.pk}").json()["autoscaling"] is None

    answer = api.put(url(deployment), POLICY, format="json")
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    # Unset fields take the documented defaults (the HPA's 10 % tolerance and 300 s scale-down window).
    assert body["policy"] == {
        **POLICY, "target": 2.0, "tolerance": 0.1, "scale_up_stabilization_seconds": 0.0,
        "scale_down_stabilization_seconds": 300.0, "scale_up_cooldown_seconds": 60.0,
        "scale_down_cooldown_seconds": 300.0,
    }  # fmt: skip
    (condition,) = body["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "ScalingReady", "Unknown", "AwaitingMetrics",
    )  # fmt: skip
    # The deployment itself shows the same state, in the list and the detail.
    assert api.get(f"/deployments/{deployment.pk}").json()["autoscaling"]["conditions"] == [condition]
    listed = api.get("/deployments").json()["results"]
    assert listed[0]["autoscaling"]["policy"]["metric"] == "waiting_requests"

    changed = api.patch(
        url(deployment), {"max_replicas": 5, "scale_down_stabilization_seconds": 30}, format="json"
    )
    assert changed.status_code == 200, changed.json()
    assert changed.json()["policy"]["max_replicas"] == 5
    assert changed.json()["policy"]["scale_down_stabilization_seconds"] == 30.0
    assert changed.json()["policy"]["min_replicas"] == 1  # kept

    assert api.delete(url(deployment)).status_code == 204
    assert api.get(url(deployment)).json()["policy"] is None
    gone = api.delete(url(deployment))
    assert (gone.status_code, gone.json()["code"]) == (404, "no_policy")

    messages = list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="autoscaling")
        .order_by("id")
        .values_list("message", flat=True)
    )
    assert [m.split(":")[0] for m in messages] == [
        "autoscaling policy set by admin", "autoscaling policy set by admin", "autoscaling policy cleared by admin; "
        "replicas stay at 1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({**POLICY, "min_replicas": 4}, "max_replicas", "at least min_replicas (4)"),
        ({**POLICY, "metric": "kv_cache_usage", "target": 80}, "target", "fraction of the KV cache"),
        ({**POLICY, "metric": "ttft_p95", "target": 0}, "target", "milliseconds"),
        ({**POLICY, "metric": "gpu_util"}, "metric", "not a valid choice"),
        ({**POLICY, "max_replicas": 1000}, "max_replicas", "less than or equal to 256"),
        ({**POLICY, "min_replicas": 0}, "min_replicas", "greater than or equal to 1"),
        ({**POLICY, "tolerance": -0.1}, "tolerance", "greater than or equal to 0"),
        ({**POLICY, "scale_down_window": 10}, "scale_down_window", "unknown field"),
        ({k: v for k, v in POLICY.items() if k != "target"}, "target", "required"),
    ],
)
def test_bad_policies_are_refused_with_the_field_and_the_reason(api, deployment, body, field, words):
    answer = api.put(url(deployment), body, format="json")
    assert answer.status_code == 400
    assert words in " ".join(answer.json()["errors"][field])
    assert api.get(url(deployment)).json()["policy"] is None  # nothing stored


def test_patch_checks_the_merged_policy_and_needs_one(api, deployment):
    none = api.patch(url(deployment), {"max_replicas": 2}, format="json")
    assert (none.status_code, none.json()["code"]) == (404, "no_policy")
    api.put(url(deployment), POLICY, format="json")
    answer = api.patch(url(deployment), {"min_replicas": 5}, format="json")  # above the stored max of 3
    assert answer.status_code == 400
    assert "at least min_replicas (5)" in answer.json()["errors"]["max_replicas"][0]
    assert api.patch(url(deployment), {"replicas": 2}, format="json").json()["code"] == "unknown_field"
    assert api.get(url(deployment)).json()["policy"]["min_replicas"] == 1


def test_a_deleted_deployment_cannot_be_given_a_policy(api, deployment):
    deployment.status = DeploymentStatus.DELETED
    deployment.save(update_fields=["status"])
    answer = api.put(url(deployment), POLICY, format="json")
    assert (answer.status_code, answer.json()["code"]) == (409, "already_deleted")


def test_permissions_view_to_read_change_to_set_and_clear(api_noperm, deployment, django_user_model):
    assert api_noperm.get(url(deployment)).status_code == 403
    user = django_user_model.objects.get(username="viewer")
    user.user_permissions.add(Permission.objects.get(codename="view_deployment"))
    assert api_noperm.get(url(deployment)).status_code == 200
    assert api_noperm.put(url(deployment), POLICY, format="json").status_code == 403
    assert api_noperm.delete(url(deployment)).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="change_deployment"))
    assert api_noperm.put(url(deployment), POLICY, format="json").status_code == 200
    assert api_noperm.delete(url(deployment)).status_code == 204


def test_admin_shows_the_policy_and_condition_read_only(client, admin_user, api, deployment):
    api.put(url(deployment), POLICY, format="json")
    client.force_login(admin_user)
    page = client.get(f"/admin/deployments/deployment/{deployment.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "1-3 replicas, waiting_requests target 2.0" in text
    assert "ScalingReady: Unknown (AwaitingMetrics)" in text
    assert 'name="autoscaling' not in text  # shown, not editable
