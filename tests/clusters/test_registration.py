"""Cluster registration, health sweep and deletion against the devcluster over HTTPS with a real worker.

Each test that registers a cluster (or faults one) has a virtual cluster of its own, so what one test leaves on
its cluster (collectors, a fault, a deletion) is never what another test starts from."""

from __future__ import annotations

import copy

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from clusters import services
from clusters.choices import ClusterStatus, Platform
from clusters.models import Cluster, ClusterEvent, Release
from core import crypto
from core.choices import RunStatus
from core.gateway import ClusterGateway
from core.models import Run
from devcluster.testing import devcluster_fixture
from tests.worker import wait_for

dc = devcluster_fixture(name="dc", nodes="cpu-small", clusters=6, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _register(api, dc, name: str, cluster: str | None = None, **extra) -> dict:
    response = api.post(
        "/clusters/register",
        {"name": name, "kubeconfig": dc.kubeconfig_yaml(cluster), **extra},
        format="json",
    )
    return response


def _finished(run_id: str, timeout: float = 60) -> Run:
    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    return wait_for(done, timeout=timeout, what=f"run {run_id} to finish")


def test_register_becomes_available_with_steps_and_events(api, worker, dc):
    response = _register(api, dc, "dev-a", dc.names[0], labels={"team": "ml"})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["run_url"].endswith(f"/runs/{body['run_id']}")
    run = _finished(body["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    cluster = Cluster.objects.get(name="dev-a")
    assert cluster.status == ClusterStatus.AVAILABLE
    assert cluster.platform == Platform.KUBERNETES
    assert cluster.kubernetes_version.startswith("v1.")
    steps = list(run.steps.filter(phase="main").values_list("name", "status"))
    assert steps[:5] == [
        ("verify", "succeeded"),
        ("identify_platform", "succeeded"),
        ("setup_cluster", "succeeded"),
        ("store", "succeeded"),
        ("mark_available", "succeeded"),
    ]
    assert run.steps.get(name="verify").output["nodes"] >= 1
    detail = api.get(f"/clusters/{cluster.pk}").json()
    assert detail["status"] == "available"
    assert detail["labels"] == {"team": "ml"}
    assert "kubeconfig" not in detail and "token" not in str(detail).lower()
    assert detail["credentials"].startswith("encrypted (key id ")
    events = api.get(f"/clusters/{cluster.pk}/events").json()["results"]
    assert events[0]["new_status"] == "available"


def test_raw_column_holds_ciphertext_only(api, worker, dc):
    response = _register(api, dc, "dev-cipher", dc.names[1])
    assert response.status_code == 202
    cluster = Cluster.objects.get(name="dev-cipher")
    with connection.cursor() as cursor:
        cursor.execute("SELECT kubeconfig FROM clusters_cluster WHERE id = %s", [cluster.pk])
        (raw,) = cursor.fetchone()
    token = dc.token(dc.names[1])
    assert token not in raw
    assert "apiVersion" not in raw and "server" not in raw
    assert raw.startswith("v1:")
    assert token in cluster.kubeconfig  # readable through the field


def test_duplicate_server_refused_and_nothing_stored(api, worker, dc):
    first = _register(api, dc, "dup-1", dc.names[2])
    assert first.status_code == 202
    _finished(first.json()["run_id"])
    second = _register(api, dc, "dup-2", dc.names[2])
    assert second.status_code == 409
    assert second.json()["code"] == "server_registered"
    assert "already registered" in second.json()["detail"]
    assert not Cluster.objects.filter(name="dup-2").exists()
    same_name = _register(api, dc, "dup-1", dc.names[3])
    assert same_name.status_code == 409
    assert same_name.json()["code"] == "name_taken"


def test_wrong_token_fails_with_unauthorized_in_plain_words(api, worker, dc):
    config = copy.deepcopy(dc.kubeconfig(dc.names[3]))
    config["users"][0]["user"]["token"] = "not-the-right-token"
    response = api.post(
        "/clusters/register", {"name": "bad-token", "kubeconfig": yaml.safe_dump(config)}, format="json"
    )
    assert response.status_code == 202
    run = _finished(response.json()["run_id"])
    assert run.status == RunStatus.FAILED
    assert "unauthorized" in run.error
    assert "rejected the credentials" in run.error
    assert "not-the-right-token" not in run.error
    cluster = Cluster.objects.get(name="bad-token")
    assert cluster.status == ClusterStatus.ERROR
    assert "unauthorized" in cluster.reason


def test_unreachable_then_restored_via_sweep(api, worker, dc):
    response = _register(api, dc, "flaky", dc.names[4])
    assert response.status_code == 202, response.json()
    run = _finished(response.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    cluster = Cluster.objects.get(name="flaky")

    dc.set_fault(dc.names[4], "unreachable")
    try:
        report = services.sweep(timeout=1.0, cluster_ids=[cluster.pk])
    finally:
        dc.set_fault(dc.names[4], "clear")
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.NOT_AVAILABLE
    assert cluster.not_available_since is not None
    assert ("flaky", "available", "not_available") in report.transitions

    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE
    assert cluster.not_available_since is None
    kinds = list(
        ClusterEvent.objects.filter(cluster=cluster, kind="health").values_list("new_status", flat=True)
    )
    assert kinds == ["available", "not_available"]  # newest first


def test_live_health_endpoint(api, worker, dc):
    response = _register(api, dc, "health-1", dc.names[5])
    assert response.status_code == 202, response.json()
    assert _finished(response.json()["run_id"]).status == RunStatus.SUCCEEDED
    cluster = Cluster.objects.get(name="health-1")
    health = api.get(f"/clusters/{cluster.pk}/health?checks=api,nodes,storage")
    assert health.status_code == 200, health.json()
    checks = health.json()["checks"]
    assert checks["api"]["ok"] and checks["nodes"]["ready"] >= 1
    assert checks["storage"]["default"]
    assert api.get(f"/clusters/{cluster.pk}/health?checks=bogus").status_code == 400


def test_delete_removes_cluster(api, worker, dc):
    response = _register(api, dc, "to-delete", dc.names[3])
    assert response.status_code == 202
    _finished(response.json()["run_id"])
    cluster = Cluster.objects.get(name="to-delete")
    releases = list(Release.objects.filter(cluster=cluster).values_list("namespace", "name"))
    assert releases  # registration installed the collectors

    def installed(gw: ClusterGateway) -> list[str]:
        """What BudCluster's releases put on the cluster that is still there (DaemonSets of the collectors)."""
        return [
            f"{ns}/{ds['metadata']['name']}"
            for ns, _ in releases
            for ds in gw.list("apps/v1", "DaemonSet", namespace=ns)
        ]

    with ClusterGateway(dc.kubeconfig(dc.names[3])) as gw:
        assert installed(gw)
    deletion = api.delete(f"/clusters/{cluster.pk}")
    assert deletion.status_code == 202
    run = _finished(deletion.json()["run_id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert api.get(f"/clusters/{cluster.pk}").status_code == 404
    # Removed from the cluster too, not only from the database.
    with ClusterGateway(dc.kubeconfig(dc.names[3])) as gw:
        assert installed(gw) == []
        assert not Release.objects.filter(cluster_id=cluster.pk).exists()


def test_rotate_keys_keeps_values_readable(api, dc, tmp_path, settings):
    keys = tmp_path / "keys"
    settings.CRYPTO_SYMMETRIC_KEY_PATH = str(keys / "symmetric-key-256")
    settings.CRYPTO_RETIRED_KEYS_DIR = str(keys / "retired")
    crypto.write_secret_file(keys / "symmetric-key-256", crypto.generate_symmetric_key())
    crypto.clear_keyring_cache()
    try:
        for i in range(3):
            Cluster.objects.create(
                name=f"rot-{i}", server_url=f"https://10.0.0.{i}:6443", kubeconfig=f"secret-{i}"
            )
        old_id = crypto.current_key_id()
        call_command("rotate_keys", "--batch-size", "2")
        new_id = crypto.current_key_id()
        assert new_id != old_id
        for i in range(3):
            cluster = Cluster.objects.get(name=f"rot-{i}")
            assert cluster.kubeconfig == f"secret-{i}"
        with connection.cursor() as cursor:
            cursor.execute("SELECT kubeconfig FROM clusters_cluster WHERE name LIKE 'rot-%%'")
            assert all(row[0].startswith(f"v1:{new_id}:") for row in cursor.fetchall())
    finally:
        crypto.clear_keyring_cache()


def test_no_token_is_401(dc):
    response = APIClient().post("/clusters/register", {"name": "x"}, format="json")
    assert response.status_code == 401
    assert not Cluster.objects.exists()
