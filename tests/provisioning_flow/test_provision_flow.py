"""Provisioning end to end with a real worker, real Terraform (1.0.3, null provider) and the pg backend.

No cloud is reachable here, so the module is the local stand-in selected with PROVISIONING_MODULE_OVERRIDE:
its kubeconfig output points at a devcluster virtual cluster, which the clusters app then registers over
HTTPS like any other (verify, setup playbook, hardware collection).
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.test import Client

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus, StepStatus
from core.models import Run, RunEvent, RunStep
from provisioning.choices import ProvisioningStatus
from provisioning.models import CloudCredential, Provisioning
from tests.worker import wait_for

from .conftest import advisory_locks, drop_schema, schema_exists, state_rows

pytestmark = pytest.mark.django_db(transaction=True)

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"

NODE_POOLS = [
    {"name": "system", "instance_type": "m6i.large", "min_size": 1, "max_size": 3, "desired_size": 2},
    {
        "name": "gpua10",
        "role": "gpu",
        "instance_type": "g5.xlarge",
        "min_size": 0,
        "max_size": 2,
        "desired_size": 1,
        "labels": {"budcluster.io/gpu": "a10g"},
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    },
]


def _credential(api, name: str = "aws-test") -> dict:
    response = api.post(
        "/credentials",
        {
            "name": name,
            "provider": "aws",
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def _finished(run_id, timeout: float = 120) -> Run:
    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    return wait_for(done, timeout=timeout, what=f"run {run_id} to finish")


def _step(run_id, name: str) -> RunStep:
    return RunStep.objects.get(run_id=run_id, name=name)


def _stored_text(*run_ids) -> str:
    """Everything stored about these runs: events, step outputs and messages, errors."""
    parts = []
    for run_id in run_ids:
        run = Run.objects.get(pk=run_id)
        parts.append(run.error + json.dumps(run.params))
        for event in RunEvent.objects.filter(run_id=run_id):
            parts.append(event.message + json.dumps(event.data))
        for step in RunStep.objects.filter(run_id=run_id):
            parts.append(step.message + json.dumps(step.output))
    return "\n".join(parts)


def test_credentials_are_write_only(api, api_noperm):
    created = _credential(api)
    assert created["secret"].startswith("encrypted (key id ")
    listed = api.get("/credentials").json()
    text = json.dumps(listed)
    assert SECRET_KEY not in text and ACCESS_KEY not in text
    assert [c["name"] for c in listed["results"]] == ["aws-test"]
    assert CloudCredential.objects.get(name="aws-test").environment()["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    incomplete = api.post(
        "/credentials", {"name": "half", "provider": "aws", "access_key_id": ACCESS_KEY}, format="json"
    )
    assert incomplete.status_code == 400
    assert incomplete.json()["code"] == "invalid_credentials"
    assert "secret_access_key" in incomplete.json()["detail"]
    taken = api.post(
        "/credentials",
        {"name": "aws-test", "provider": "aws", "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        format="json",
    )
    assert (taken.status_code, taken.json()["code"]) == (409, "name_taken")
    assert api_noperm.get("/credentials").status_code == 403
    assert api.delete(f"/credentials/{created['id']}").status_code == 204
    assert not CloudCredential.objects.exists()


def test_provision_waits_for_approval_then_registers_and_destroys_on_delete(
    api, api_noperm, api_approver, admin_user, worker, dc, local_module
):
    local_module(dc.names[0])
    credential = _credential(api)
    response = api.post(
        "/clusters/provision",
        {
            "name": "prov-a",
            "provider": "aws",
            "region": "us-east-1",
            "kubernetes_version": "1.31",
            "node_pools": NODE_POOLS,
            "credential_id": credential["id"],
            "auto_approve": False,
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    run_id = response.json()["run_id"]
    cluster = Cluster.objects.get(pk=response.json()["cluster_id"])
    assert cluster.status == ClusterStatus.PROVISIONING and not cluster.kubeconfig

    wait_for(
        lambda: _step(run_id, "approve").status == StepStatus.WAITING, timeout=60, what="the approval wait"
    )
    plan = _step(run_id, "plan").output["summary"]
    # network + control plane + one node per desired node (2 system + 1 GPU).
    assert (plan["add"], plan["change"], plan["destroy"]) == (5, 0, 0)
    shown = api.get(f"/clusters/{cluster.pk}/provision").json()
    assert shown["status"] == "awaiting_approval" and shown["plan_summary"]["add"] == 5
    assert "token" not in shown["variables"]  # sensitive module variables are stored encrypted only
    assert Run.objects.get(pk=run_id).status == RunStatus.RUNNING
    assert not Provisioning.objects.get(cluster=cluster).applied_at  # nothing applied before approval

    assert api_noperm.post(f"/runs/{run_id}/approve").status_code == 403
    # The requester may not approve its own plan (PROVISIONING_APPROVER_MUST_DIFFER): another admin does.
    own = api.post(f"/runs/{run_id}/approve")
    assert (own.status_code, own.json()["code"]) == (403, "self_approval")
    approved = api_approver.post(f"/runs/{run_id}/approve")
    assert approved.status_code == 202, approved.json()
    assert approved.json()["approved_by"] == "approver"
    again = api_approver.post(f"/runs/{run_id}/approve")
    assert (again.status_code, again.json()["code"]) == (409, "already_approved")

    run = _finished(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE
    assert cluster.server_url == dc.cluster_url(dc.names[0])
    provisioning = Provisioning.objects.get(cluster=cluster)
    assert provisioning.status == ProvisioningStatus.PROVISIONED
    assert provisioning.outputs["node_count"] == 3
    assert "kubeconfig" not in provisioning.outputs

    resources = _step(run_id, "apply").output["resources"]
    assert len(resources) == 5 and {r["status"] for r in resources.values()} == {"complete"}
    completed = RunEvent.objects.filter(run_id=run_id, step="apply", status="complete")
    assert completed.count() == 5
    assert all(e.data["source"] == "terraform" for e in completed)

    registration = provisioning.registration_run
    assert registration.status == RunStatus.SUCCEEDED
    setup_events = RunEvent.objects.filter(run=registration, step="setup_cluster", data__source="ansible")
    tasks = list(setup_events.values_list("data__task", flat=True))
    assert "Create BudCluster namespaces" in tasks and len(tasks) == len(set(tasks))  # one row per task
    if registration.steps.filter(name="read_nodes").exists():
        assert cluster.nodes.count() >= 1  # hardware inventory collected during registration

    # The state lives in the pg backend, one schema per cluster.
    schema = provisioning.state_name
    assert schema == f"tf_cluster_{cluster.pk}"
    (name, data), *_ = state_rows(schema)
    assert name == "default" and '"null_resource"' in data

    # The module printed the secret key (echo_env_var); no stored line may hold it, nor the cluster token.
    stored = _stored_text(run_id, registration.pk)
    assert SECRET_KEY not in stored
    assert dc.token(dc.names[0]) not in stored
    assert "***" in stored

    # The operators' console shows the plan, each resource and the redacted event logs; never secrets.
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/admin/provisioning/provisioning/{provisioning.pk}/change/").content.decode()
    assert "5 to add, 0 to change, 0 to destroy" in page
    assert "null_resource.control_plane" in page and "Create BudCluster namespaces" in page
    assert "encrypted (key id" in page
    credential_page = client.get(
        f"/admin/provisioning/cloudcredential/{credential['id']}/change/"
    ).content.decode()
    assert "encrypted (key id" in credential_page
    for text in (page, credential_page):
        assert SECRET_KEY not in text and ACCESS_KEY not in text and dc.token(dc.names[0]) not in text

    deletion = api.delete(f"/clusters/{cluster.pk}")
    assert deletion.status_code == 202
    deleted = _finished(deletion.json()["run_id"])
    assert deleted.status == RunStatus.SUCCEEDED, deleted.error
    destroy = _step(deleted.pk, "destroy")
    assert destroy.status == StepStatus.SUCCEEDED and destroy.output["destroyed"] == 5
    assert _step(deleted.pk, "teardown_cluster").output["changed"] >= 1
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert not schema_exists(schema)
    assert SECRET_KEY not in _stored_text(deleted.pk)


def test_cancel_mid_apply_stops_terraform_and_leaves_no_lock(api, worker, dc, local_module):
    local_module(dc.names[1], delay=2)
    credential = _credential(api, "aws-cancel")
    response = api.post(
        "/clusters/provision",
        {
            "name": "prov-cancel",
            "provider": "aws",
            "region": "eu-west-1",
            "node_pools": NODE_POOLS,
            "credential_id": credential["id"],
            "auto_approve": True,
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    run_id = response.json()["run_id"]
    cluster_id = response.json()["cluster_id"]
    schema = f"tf_cluster_{cluster_id}"
    try:
        wait_for(
            lambda: RunEvent.objects.filter(run_id=run_id, step="apply", status="complete").exists(),
            timeout=60,
            what="the first resource to be created",
        )
        assert api.post(f"/runs/{run_id}/cancel", {"reason": "test"}, format="json").status_code == 202
        run = _finished(run_id, timeout=60)
        assert run.status == RunStatus.CANCELLED
        assert _step(run_id, "apply").status == StepStatus.CANCELLED
        assert _step(run_id, "outputs").status == StepStatus.SKIPPED
        created = RunEvent.objects.filter(run_id=run_id, step="apply", status="complete").count()
        assert 1 <= created < 5
        assert advisory_locks() == 0
        provisioning = Provisioning.objects.get(cluster_id=cluster_id)
        assert provisioning.status == ProvisioningStatus.CANCELLED
        cluster = Cluster.objects.get(pk=cluster_id)
        assert cluster.status == ClusterStatus.ERROR
        assert "delete the cluster to destroy" in cluster.reason

        # The interrupted apply released the state lock: deleting the cluster destroys what was created.
        deletion = api.delete(f"/clusters/{cluster_id}")
        deleted = _finished(deletion.json()["run_id"], timeout=60)
        assert deleted.status == RunStatus.SUCCEEDED, deleted.error
        # Terraform keeps the resource it was creating when interrupted (tainted) in state: destroyed too.
        assert created <= _step(deleted.pk, "destroy").output["destroyed"] < 5
        assert _step(deleted.pk, "teardown_cluster").output == {
            "skipped": "the cluster has no kubeconfig (never registered)"
        }
        assert not schema_exists(schema)
    finally:
        drop_schema(schema)


def test_provision_refusals(api, dc, local_module):
    local_module(dc.names[2])
    credential = _credential(api, "aws-refuse")
    body = {
        "name": "prov-ref",
        "provider": "azure",
        "region": "eastus",
        "node_pools": NODE_POOLS,
        "credential_id": credential["id"],
    }
    wrong_provider = api.post("/clusters/provision", body, format="json")
    assert wrong_provider.status_code == 400
    assert wrong_provider.json()["code"] == "credential_provider_mismatch"
    assert "is for aws" in wrong_provider.json()["detail"]
    no_system = api.post(
        "/clusters/provision", {**body, "provider": "aws", "node_pools": NODE_POOLS[1:]}, format="json"
    )
    assert (no_system.status_code, no_system.json()["code"]) == (400, "invalid_node_pools")
    no_credential = api.post(
        "/clusters/provision",
        {**body, "provider": "aws", "credential_id": credential["id"] + 1000},
        format="json",
    )
    assert (no_credential.status_code, no_credential.json()["code"]) == (404, "no_such_credential")
    assert not Cluster.objects.filter(name="prov-ref").exists()
    registered = Cluster.objects.create(name="has-config", kubeconfig="apiVersion: v1", status="available")
    # The cluster names itself: the re-provision body has no `name` (an unknown key is a 400).
    again_body = {key: value for key, value in body.items() if key != "name"}
    again = api.post(f"/clusters/{registered.pk}/provision", {**again_body, "provider": "aws"}, format="json")
    assert (again.status_code, again.json()["code"]) == (409, "already_registered")
    not_provisioning = Run.objects.create(kind="cluster.register", title="not a provisioning run")
    approve = api.post(f"/runs/{not_provisioning.pk}/approve")
    assert (approve.status_code, approve.json()["code"]) == (409, "not_awaiting_approval")


def test_provision_command_follows_the_run(api, worker, dc, local_module):
    local_module(dc.names[2])
    _credential(api, "aws-cmd")
    out = io.StringIO()
    call_command(
        "provision", "prov-cmd", "--provider", "aws", "--region", "us-west-2", "--credential", "aws-cmd",
        "--system-pool", "m6i.large:1:1:2", "--gpu-pool", "gpu:g5.xlarge:1", "--auto-approve", "--timeout", "120",
        stdout=out,
    )  # fmt: skip
    text = out.getvalue()
    assert "provisioned and registered" in text
    assert "Apply: done" in text
    cluster = Cluster.objects.get(name="prov-cmd")
    assert cluster.status == ClusterStatus.AVAILABLE
    assert cluster.provisioning.node_pools[1]["instance_type"] == "g5.xlarge"
    assert SECRET_KEY not in text
    drop_schema(cluster.provisioning.state_name)
