"""A worker with short webhook retry settings, a receiver on loopback, and a subscription helper."""

from __future__ import annotations

import pytest

from tests.conftest import WORKER_ENV, settle_runs
from tests.worker import WorkerProcess
from webhooks import services

from .receiver import Receiver

HOOK_ENV = {
    **WORKER_ENV,
    "WEBHOOK_ALLOW_LOOPBACK": "1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_SECONDS": "0.4",
    "WEBHOOK_DISABLE_AFTER": "4",
    "WEBHOOK_TIMEOUT": "5",
    "WEBHOOK_LEASE_SECONDS": "2",
}


@pytest.fixture(scope="module")
def hook_worker(celery_worker_process, django_db_blocker):
    """A worker with short retry settings; the session worker pauses meanwhile so it takes none of these tasks."""
    celery_worker_process.stop()
    with django_db_blocker.unblock():
        proc = WorkerProcess(name="webhooks", extra_env=HOOK_ENV).start()
    yield proc
    proc.stop()
    with django_db_blocker.unblock():
        celery_worker_process.start()


@pytest.fixture
def hooks(hook_worker, transactional_db, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    services.forget_subscriptions()
    yield hook_worker
    settle_runs()  # no run still writing when the database is flushed for the next test
    services.forget_subscriptions()


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def subscribe(api, receiver, **body) -> dict:
    answer = api.post(
        "/webhooks",
        {"name": "ops", "url": receiver.url, "event_types": ["io.bud.cluster.*"], **body},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    return answer.json()
