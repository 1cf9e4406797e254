"""Approving a provisioning plan: view permission on it, and not by the user who requested it (issue 14, item 7).

One rule, in ``provisioning.services.approve``; the API, the admin action and ``manage.py approve_run`` all go
through it."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from provisioning import services
from provisioning.models import CloudCredential, Provisioning

from .conftest import api_client

pytestmark = pytest.mark.django_db

APPROVER_PERMS = ("core.approve_run", "provisioning.view_provisioning")


@pytest.fixture
def requester(make_user):
    return make_user("requester", *APPROVER_PERMS, "provisioning.add_provisioning", staff=True)


@pytest.fixture
def approver(make_user):
    return make_user("approver", *APPROVER_PERMS, staff=True)


@pytest.fixture
def waiting_run(requester):
    """A provisioning run of ``requester`` whose plan is ready and waits for approval."""
    cluster = Cluster.objects.create(name="prov-1", status=ClusterStatus.PROVISIONING)
    credential = CloudCredential.objects.create(
        name="aws-1", provider="aws", secret={"access_key_id": "AKIA", "secret_access_key": "s"}
    )
    run = Run.objects.create(
        kind=services.PROVISION_KIND, title="provision prov-1", status=RunStatus.RUNNING, created_by=requester
    )
    RunStep.objects.create(run=run, order=0, name="plan", title="Plan", status=StepStatus.SUCCEEDED)
    RunStep.objects.create(run=run, order=1, name="approve", title="Approve", status=StepStatus.PENDING)
    Provisioning.objects.create(
        cluster=cluster, provider="aws", region="us-east-1", kubernetes_version="1.31", credential=credential,
        module="terraform/modules/aws-eks", backend="local", state_name="x", run=run, created_by=requester,
    )  # fmt: skip
    return run


def _approved(run: Run) -> bool:
    return Provisioning.objects.get(run=run).approved_at is not None


def test_the_requester_may_not_approve_their_own_plan(requester, waiting_run):
    response = api_client(requester).post(f"/runs/{waiting_run.pk}/approve")
    assert (response.status_code, response.json()["code"]) == (403, "self_approval")
    assert not _approved(waiting_run)


def test_a_superuser_requester_may_not_either(django_user_model, waiting_run):
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "a-long-test-password")
    Run.objects.filter(pk=waiting_run.pk).update(created_by=boss)
    Provisioning.objects.filter(run=waiting_run).update(created_by=boss)
    response = api_client(boss).post(f"/runs/{waiting_run.pk}/approve")
    assert (response.status_code, response.json()["code"]) == (403, "self_approval")


def test_approving_needs_view_permission_on_the_plan(make_user, waiting_run):
    blind = api_client(make_user("blind", "core.approve_run"))
    assert blind.post(f"/runs/{waiting_run.pk}/approve").status_code == 403
    assert (
        blind.post("/runs/00000000-0000-0000-0000-000000000001/approve").status_code == 403
    )  # no lookup first
    assert not _approved(waiting_run)
    with pytest.raises(services.ProvisioningRefused) as refused:
        services.approve(waiting_run, make_user("blind2", "core.approve_run"))
    assert (refused.value.code, refused.value.status) == ("approval_not_allowed", 403)
    with pytest.raises(services.ProvisioningRefused) as anonymous:
        services.approve(waiting_run, None)
    assert anonymous.value.code == "approval_not_allowed"


def test_another_user_with_both_permissions_approves(approver, waiting_run):
    response = api_client(approver).post(f"/runs/{waiting_run.pk}/approve")
    assert response.status_code == 202, response.json()
    assert response.json()["approved_by"] == "approver"
    assert Provisioning.objects.get(run=waiting_run).approved_by == approver


def test_the_rule_can_be_turned_off(settings, requester, waiting_run):
    settings.PROVISIONING_APPROVER_MUST_DIFFER = False
    response = api_client(requester).post(f"/runs/{waiting_run.pk}/approve")
    assert response.status_code == 202, response.json()
    assert _approved(waiting_run)


def test_the_admin_action_goes_through_the_same_rule(requester, approver, view_only_staff, waiting_run):
    provisioning = Provisioning.objects.get(run=waiting_run)
    action = {"action": "approve_plans", "_selected_action": [provisioning.pk], "index": 0}
    client = Client()

    client.force_login(view_only_staff)
    assert client.post("/admin/provisioning/provisioning/", action).status_code == 403

    client.force_login(requester)
    shown = client.post("/admin/provisioning/provisioning/", action, follow=True)
    assert "may not approve its plan" in shown.content.decode()
    assert not _approved(waiting_run)

    client.force_login(approver)
    shown = client.post("/admin/provisioning/provisioning/", action, follow=True)
    assert "plan approved" in shown.content.decode()
    assert Provisioning.objects.get(run=waiting_run).approved_by == approver


def test_the_command_approves_as_the_operator_it_names(requester, approver, waiting_run, monkeypatch):
    monkeypatch.delenv("BUDCLUSTER_OPERATOR", raising=False)
    with pytest.raises(CommandError, match="--as USERNAME"):
        call_command("approve_run", str(waiting_run.pk))
    with pytest.raises(CommandError, match="self_approval"):
        call_command("approve_run", str(waiting_run.pk), "--as", "requester")
    with pytest.raises(CommandError, match="no user"):
        call_command("approve_run", str(waiting_run.pk), "--as", "ghost")
    assert not _approved(waiting_run)
    monkeypatch.setenv("BUDCLUSTER_OPERATOR", "approver")
    out = io.StringIO()
    call_command("approve_run", str(waiting_run.pk), stdout=out)
    assert "approved by approver" in out.getvalue()
    assert Provisioning.objects.get(run=waiting_run).approved_by == approver
