"""Shared fixtures: API clients with and without permissions, and a real Celery worker."""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.worker import WorkerProcess


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.com", "a-long-test-password")


@pytest.fixture
def api(admin_user) -> APIClient:
    """An API client authenticated with a token of a superuser."""
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=admin_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api_noperm(django_user_model) -> APIClient:
    """An API client authenticated as a user without any model permission."""
    user = django_user_model.objects.create_user("viewer", "viewer@example.com", "a-long-test-password")
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


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
        worker = WorkerProcess(name="session").start()
    yield worker
    worker.stop()


@pytest.fixture
def worker(celery_worker_process, transactional_db):
    """Use in tests whose work runs on the real worker: data must be committed for it to see."""
    return celery_worker_process
