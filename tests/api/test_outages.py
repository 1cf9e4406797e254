"""While PostgreSQL or the broker is down the API answers 503 with Retry-After and names the dependency; a run
refused for a broker outage leaves no row behind.

Real outages: the database connection of this process is pointed at a closed port (the shared PostgreSQL keeps
running for everyone else), and the broker is a redis-server of this test's own, stopped mid-test.
"""

from __future__ import annotations

import subprocess
import uuid
from contextlib import contextmanager

import pytest
import redis
from django.db import connections
from django.test import Client

from clusters.models import Cluster
from core import outages
from core.choices import RunStatus
from core.models import Run
from deployments.models import Deployment
from hardware.models import Node
from tests.api.conftest import free_port
from tests.kubeconfig.test_validate import with_server
from tests.worker import wait_for


@contextmanager
def database_down():
    """This process's connection to PostgreSQL goes to a port nothing listens on (connection refused)."""
    conn = connections["default"]
    saved = {key: conn.settings_dict[key] for key in ("HOST", "PORT")}
    conn.close()
    conn.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        conn.close()
        conn.settings_dict.update(saved)


class RedisServer:
    """A redis-server of the test's own, on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._answers, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def queued(self) -> int:
        return redis.Redis(port=self.port).llen("celery")


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def _assert_503(response, code: str, words: str) -> None:
    assert response.status_code == 503, response.content[:500]
    assert response["Retry-After"] == str(outages.RETRY_AFTER_SECONDS)
    body = response.json()
    assert body["code"] == code and words in body["detail"]
    assert body["retry_after"] == outages.RETRY_AFTER_SECONDS  # the API's one error shape, with when to retry


@pytest.mark.django_db(transaction=True)
def test_database_outage_answers_503_naming_the_database(api, admin_user):
    admin = Client(raise_request_exception=False)
    admin.force_login(admin_user)
    with database_down():
        for path in ("/clusters", "/deployments", f"/runs/{uuid.uuid4()}", "/clusters/1"):
            _assert_503(api.get(path), "database_unavailable", "database is unavailable")
        deploy = api.post(
            "/deployments/deploy", {"cluster": 1, "name": "d", "model": "llama-3.1-8b"}, format="json"
        )
        _assert_503(deploy, "database_unavailable", "database is unavailable")
        # Outside DRF (the admin's session lookup fails in Django's own code): the 500 view answers 503 too.
        _assert_503(admin.get("/admin/clusters/cluster/"), "database_unavailable", "database is unavailable")
    assert api.get("/clusters").status_code == 200


def _kubeconfig(port: int) -> str:
    return with_server(f"https://10.20.30.40:{port}")


@pytest.mark.django_db(transaction=True)
def test_broker_outage_refuses_a_registration_with_503_and_stores_nothing(api, broker_at, own_redis):
    with broker_at(own_redis.url):
        up = api.post("/clusters/register", {"name": "up", "kubeconfig": _kubeconfig(6443)}, format="json")
        assert up.status_code == 202
        assert own_redis.queued() == 1  # the run's first message went out after commit

        own_redis.stop()
        down = api.post(
            "/clusters/register", {"name": "down", "kubeconfig": _kubeconfig(6444)}, format="json"
        )
        _assert_503(down, "broker_unavailable", "nothing was stored")
    assert list(Cluster.objects.values_list("name", flat=True)) == ["up"]
    assert Run.objects.count() == 1


def _cluster_with_a_gpu() -> Cluster:
    """A cluster whose stored inventory fits an 8B model: deploy plans on the stored rows, no API server needed."""
    cluster = Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443", status="available")
    Node.objects.create(
        cluster=cluster, name="gpu-0", ready=True, cpu_cores=64, memory_bytes=512 * 2**30,
        accelerator_type="cuda", accelerator_vendor="nvidia", accelerator_model="NVIDIA-H100-80GB-HBM3",
        accelerator_resource="nvidia.com/gpu", accelerator_count=1, accelerator_memory_mib=81559,
        free_accelerators=1, free_cpu_millicores=64000, free_memory_bytes=500 * 2**30,
        allocatable={"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "1", "pods": "110"},
    )  # fmt: skip
    return cluster


@pytest.mark.django_db(transaction=True)
def test_broker_outage_refuses_a_deploy_with_503_and_leaves_no_deployment(api, broker_at):
    cluster = _cluster_with_a_gpu()
    with broker_at(f"redis://127.0.0.1:{free_port()}/0"):
        response = api.post(
            "/deployments/deploy",
            {"cluster": cluster.pk, "name": "llama", "model": "llama-3.1-8b-instruct", "hf_token": "hf_x"},
            format="json",
        )
    _assert_503(response, "broker_unavailable", "broker is unavailable")
    assert not Deployment.objects.exists()
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_broker_lost_between_the_check_and_the_send_keeps_the_run_for_the_reaper(
    api, broker_at, own_redis, monkeypatch, settings
):
    # The check passed a moment before the broker went away: the run is committed, the send fails after commit.
    monkeypatch.setattr(outages, "require_broker", lambda: None)
    settings.WORKFLOW_STALE_AFTER = 0.2
    with broker_at(own_redis.url):
        own_redis.stop()
        response = api.post(
            "/clusters/register", {"name": "late", "kubeconfig": _kubeconfig(6445)}, format="json"
        )
        assert response.status_code == 202
        run = Run.objects.get(pk=response.json()["run_id"])
        assert run.status == RunStatus.PENDING

        own_redis.start()
        from core.workflow import reap_stale_runs

        wait_for(
            lambda: str(run.pk) in reap_stale_runs(), timeout=10, what="the reaper to send the pending run"
        )
        assert own_redis.queued() == 1
