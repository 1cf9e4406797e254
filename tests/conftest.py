"""Shared fixtures: API clients with and without permissions, and a real Celery worker."""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from core.tokens import create_token
from tests.parallel import (  # noqa: F401 - hooks for parallel runs (pytest-xdist)
    isolate_worker,
    pytest_collection_modifyitems,
    pytest_terminal_summary,
    pytest_testnodedown,
)
from tests.worker import WorkerProcess

isolate_worker()

# Worker subprocesses may talk to the loopback devcluster (the API process checks it per test via settings).
WORKER_ENV = {"BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS": "1"}


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.com", "a-long-test-password")


@pytest.fixture
def api(admin_user) -> APIClient:
    """An API client authenticated with a token of a superuser."""
    client = APIClient()
    _token, key = create_token(admin_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def api_approver(django_user_model) -> APIClient:
    """An API client of a second superuser ("approver"): approves plans that the `api` user requested (the
    requester may not, PROVISIONING_APPROVER_MUST_DIFFER)."""
    user = django_user_model.objects.create_superuser(
        "approver", "approver@example.com", "a-long-test-password"
    )
    client = APIClient()
    _token, key = create_token(user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def api_noperm(django_user_model) -> APIClient:
    """An API client authenticated as a user without any model permission."""
    user = django_user_model.objects.create_user("viewer", "viewer@example.com", "a-long-test-password")
    client = APIClient()
    _token, key = create_token(user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture(scope="session", autouse=True)
def _test_keys():
    """Crypto keys for the suite (var/test-keys), shared with worker subprocesses through the environment."""
    from core import crypto

    if not crypto.symmetric_key_path().exists():
        crypto.write_secret_file(crypto.symmetric_key_path(), crypto.generate_symmetric_key())
    if not crypto.private_key_path().exists():
        # 2048 bits keeps the suite quick; generate_keys writes 4096-bit keys for real use.
        crypto.write_secret_file(crypto.private_key_path(), crypto.generate_rsa_private_key_pem(2048))
    crypto.clear_keyring_cache()


@pytest.fixture(scope="session")
def _clean_broker():
    """Start every session with an empty test broker database."""
    if settings.CELERY_BROKER_URL.startswith("redis://"):
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, _clean_broker):
    """One real worker subprocess for the session (tests that kill workers start their own)."""
    with django_db_blocker.unblock():
        worker = WorkerProcess(name="session", extra_env=WORKER_ENV).start()
    yield worker
    worker.stop()


@pytest.fixture
def worker(celery_worker_process, transactional_db):
    """Use in tests whose work runs on the real worker: data must be committed for it to see.

    On the way out it lets the test's runs settle (or cancels them), so the worker is not still writing when
    the database is flushed for the next test (a flush racing a step's writes deadlocks)."""
    yield celery_worker_process
    settle_runs()


def settle_runs(timeout: float = 15.0) -> None:
    import time

    from core import workflow
    from core.choices import RunStatus
    from core.models import Run

    def active():
        return list(Run.objects.filter(status__in=RunStatus.active()))

    deadline = time.monotonic() + timeout
    while (runs := active()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for run in runs:
        workflow.request_cancel(run, reason="test finished")
    deadline = time.monotonic() + timeout
    while active() and time.monotonic() < deadline:
        time.sleep(0.2)
