"""Helpers for tests that run management commands the way an operator does: in a process of their own, in a
second terminal, against the service's database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.worker import test_database_url

ROOT = Path(__file__).resolve().parents[2]


def command_env(**extra: str | None) -> dict[str, str]:
    """The environment of a second terminal: the test database and broker, none of the settings `make run` sets
    for its own processes (``None`` in ``extra`` removes a variable)."""
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    env.pop("BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS", None)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python manage.py ARGS`` in its own process; returns the finished process (output captured)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
