"""Findings of the fault run, on the workflow engine and the API that starts runs (no cluster needed):

* a start whose first message cannot be sent after its rows committed (the broker died between the launch's
  check and the commit) is answered 202, and the reaper sends the run once the broker is back;
* ``Idempotency-Key``: a retried start with the same key by the same user answers with the first run;
* the heartbeat thread outlives its database connection being killed, and reconnects;
* one resume of a run whose worker died is counted once (not by the reaper and again by the takeover);
* the checks of waiting steps travel on their own queue (``WORKFLOW_POLL_QUEUE``), never the main one.

Real parts throughout: a redis-server of the test's own stopped mid-request, PostgreSQL backends terminated with
``pg_terminate_backend``, worker subprocesses killed by their failpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.utils import timezone

from core import workflow
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from deployments.models import Deployment
from tests.api.conftest import _broker_at, free_port
from tests.api.test_outages import RedisServer, _cluster_with_a_gpu
from tests.worker import WorkerProcess, kill_worker_during_step, run_finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY = {"name": "llama", "model": "llama-3.1-8b-instruct", "hf_token": "hf_canary_0123456789"}


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def _deploy(api, cluster, key: str | None = None, **body):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return api.post(
        "/deployments/deploy", {"cluster": cluster.pk, **DEPLOY, **body}, format="json", **headers
    )


# --- item 2: a start the broker refuses after commit ----------------------------------------------------------------


def test_broker_lost_after_the_commit_answers_202_and_the_reaper_sends_the_run(
    api, own_redis, settings, caplog
):
    """The broker answers the launch's check, then dies before the commit hook sends the first message: the rows
    are committed, so the answer is 202 with the run (not a 5xx that makes the client retry a start that
    happened), the run waits PENDING, and the reaper sends it once the broker is back."""
    cluster = _cluster_with_a_gpu()

    def broker_dies_before_the_send(sender, instance, created, **kwargs):
        if created:  # the commit hooks run in order: this one before the launch's send
            transaction.on_commit(own_redis.stop)

    post_save.connect(broker_dies_before_the_send, sender=Run)
    try:
        with _broker_at(own_redis.url), caplog.at_level(logging.WARNING, logger="core.workflow"):
            response = _deploy(api, cluster)
    finally:
        post_save.disconnect(broker_dies_before_the_send, sender=Run)

    assert response.status_code == 202, response.content[:500]
    run = Run.objects.get(pk=response.json()["run_id"])
    assert run.status == RunStatus.PENDING
    assert Deployment.objects.get(pk=response.json()["deployment_id"]).name == "llama"
    logged = [r.getMessage() for r in caplog.records if str(run.pk) in r.getMessage()]
    assert logged and "stays pending until the broker answers again" in logged[0]
    assert DEPLOY["hf_token"] not in caplog.text

    # The broker is back: the reaper (its pass made "later" by a short stale window) sends the pending run.
    own_redis.start()
    settings.WORKFLOW_STALE_AFTER = 0.0
    with _broker_at(own_redis.url):
        assert str(run.pk) in workflow.reap_stale_runs()
    assert own_redis.queued() == 1
    assert run.events.filter(status="resumed").count() == 1


# --- item 2: Idempotency-Key --------------------------------------------------------------------------------------


def test_a_retried_deploy_with_the_same_key_answers_with_the_first_run(api, api_approver, own_redis):
    cluster = _cluster_with_a_gpu()
    with _broker_at(own_redis.url):
        first = _deploy(api, cluster, key="deploy-7f3a")
        assert first.status_code == 202, first.content[:500]
        assert "Idempotent-Replayed" not in first

        retry = _deploy(api, cluster, key="deploy-7f3a")
        assert retry.status_code == 202, retry.content[:500]
        assert retry["Idempotent-Replayed"] == "true"
        body, again = first.json(), retry.json()
        assert again["run_id"] == body["run_id"] and again["run_url"] == body["run_url"]
        assert (again["deployment_id"], again["namespace"]) == (body["deployment_id"], body["namespace"])

        # Another user's request with the same key is a request of its own.
        other = _deploy(api_approver, cluster, key="deploy-7f3a", name="other")
        assert other.status_code == 202 and other.json()["run_id"] != body["run_id"]

        # Without a key every request is a new start (here refused: the name is taken).
        assert _deploy(api, cluster).status_code == 409

    assert Run.objects.filter(kind="deployment.deploy").count() == 2
    assert sorted(Deployment.objects.values_list("name", flat=True)) == ["llama", "other"]
    assert own_redis.queued() == 2  # one first message per run started


def test_the_key_is_scoped_per_kind_of_run(api, own_redis):
    """The same key on a registration and a deploy names two different requests."""
    from tests.api.test_outages import _kubeconfig

    cluster = _cluster_with_a_gpu()
    with _broker_at(own_redis.url):
        deploy = _deploy(api, cluster, key="k-1")
        register = api.post(
            "/clusters/register",
            {"name": "second", "kubeconfig": _kubeconfig(6443)},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k-1",
        )
        replay = api.post(
            "/clusters/register",
            {"name": "third", "kubeconfig": _kubeconfig(6444)},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k-1",
        )
    assert deploy.status_code == register.status_code == replay.status_code == 202
    assert register.json()["run_id"] != deploy.json()["run_id"]
    assert replay.json() == {**register.json(), "status": replay.json()["status"]}
    assert Run.objects.filter(kind="cluster.register").count() == 1


@pytest.mark.parametrize("key", ["", "a" * 256, "two words", "ключ"])
def test_a_malformed_key_is_refused_with_400_and_starts_nothing(api, key):
    cluster = _cluster_with_a_gpu()
    with _broker_at(f"redis://127.0.0.1:{free_port()}/0"):  # nothing may be sent, nor even checked
        response = _deploy(api, cluster, key=key)
    assert response.status_code == 400, response.content[:500]
    body = response.json()
    assert body["code"] == "invalid" and "Idempotency-Key" in body["errors"]
    assert not Run.objects.exists() and not Deployment.objects.exists()


def test_the_schema_documents_the_header_on_every_run_starting_post(api):
    schema = api.get("/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    starting = {
        path: operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method == "post" and "202" in operation.get("responses", {})
    }
    assert {
        "/clusters/register",
        "/deployments/deploy",
        "/deployments/{id}/rollback",
        "/deployments/{id}/benchmark",
        "/clusters/provision",
        "/clusters/{id}/provision",
        "/clusters/{id}/collect-node-info",
    } <= set(starting)
    missing = [
        path
        for path, operation in starting.items()
        if not path.startswith("/runs/")  # cancel and approve act on a run that exists
        # a webhook redelivery starts no run; a repeated one is one more delivery, which receivers deduplicate
        # on webhook-id
        and not path.endswith("/redeliver")
        and not any(
            p.get("in") == "header" and p.get("name") == "Idempotency-Key"
            for p in operation.get("parameters", [])
        )
    ]
    assert missing == []


# --- item 5: the heartbeat outlives a killed connection --------------------------------------------------------------


def _terminate_heartbeat_backends() -> int:
    """Terminate the PostgreSQL backends (of this test database, not this thread's) whose last statement was a
    heartbeat: the heartbeat thread's own connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            """AND query LIKE 'UPDATE "core_run" SET "heartbeat_at"%%'"""
        )
        return cursor.fetchone()[0]


def test_heartbeat_reconnects_after_its_database_connection_is_killed(settings):
    settings.WORKFLOW_HEARTBEAT_INTERVAL = 0.05
    run = Run.objects.create(kind="demo.slow", status=RunStatus.RUNNING)
    step = RunStep.objects.create(run=run, order=0, name="work", title="Work", status=StepStatus.RUNNING)

    def stamped_after(moment) -> bool:
        beat = RunStep.objects.get(pk=step.pk).heartbeat_at
        return beat is not None and beat > moment

    with workflow._Heartbeat(run.pk, step.pk) as heartbeat:
        wait_for(lambda: stamped_after(run.created_at), timeout=10, what="the first heartbeat")
        wait_for(_terminate_heartbeat_backends, timeout=10, interval=0.01, what="the heartbeat's connection")
        killed = timezone.now()
        wait_for(
            lambda: stamped_after(killed), timeout=10, what="a heartbeat after its connection was killed"
        )
        assert heartbeat.thread.is_alive()
    wait_for(lambda: not heartbeat.thread.is_alive(), timeout=10, what="the heartbeat to stop")


# --- item 6: one resume, counted once ------------------------------------------------------------------------------


def test_a_resume_after_a_dead_worker_is_counted_once(worker):
    _, run = kill_worker_during_step(
        worker,
        lambda: (None, workflow.get_workflow("demo.slow").launch(params={"sleep": 0.1}).pk),
        "work",
        name="counted",
        extra_env={},
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.steps.get(name="work").attempt == 2
    assert run.resumed_count == 1


# --- item 4: poll checks on their own queue --------------------------------------------------------------------------


def test_the_checks_of_a_waiting_step_go_to_the_poll_queue(worker, settings, tmp_path: Path):
    """A worker of the main queue alone never runs a poll check (a hung cluster's checks cannot fill it): the
    check waits on the poll queue until a worker of that queue takes it."""
    (tmp_path / "ready").write_text("x")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    worker.stop()
    main = WorkerProcess(name="main-only", queues=["celery"])
    polls = WorkerProcess(name="polls-only", queues=[settings.WORKFLOW_POLL_QUEUE])
    try:
        main.start()
        run = workflow.get_workflow("demo.wait").launch(params={"path": str(tmp_path / "ready")})
        wait_for(
            lambda: broker.llen(settings.WORKFLOW_POLL_QUEUE) == 1,
            timeout=10,
            what="the check on the poll queue",
        )
        assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING
        polls.start()
        finished = run_finished(run.pk, timeout=30)
    finally:
        polls.stop()
        main.stop()
        worker.start()
    assert finished.status == RunStatus.SUCCEEDED, finished.error
    assert finished.steps.get(name="after").status == StepStatus.SUCCEEDED
