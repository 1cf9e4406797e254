"""Fixtures for API hardening tests: point this process's Celery app at another broker (a dead one, an in-memory
one) for the length of a test."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest


def free_port() -> int:
    """A TCP port nothing listens on (bound and released: connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_broker_pools() -> None:
    from kombu import pools

    from budcluster_site.celery import app

    # Celery caches one connection pool and one producer pool per app, bound to the URL they were made for, and
    # takes its producer pool from kombu's process-wide registry (keyed by broker URL). Closing a pool without
    # emptying that registry would hand the closed pool back the next time the same URL is used ("Acquire on
    # closed pool"), so close and forget them all.
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def _broker_at(url: str) -> Iterator[None]:
    from budcluster_site.celery import app

    saved_env = os.environ.get("CELERY_BROKER_URL")
    saved = app.conf.broker_url
    _reset_broker_pools()
    # Celery reads CELERY_BROKER_URL from the environment before its own setting.
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url = url
    try:
        yield
    finally:
        _reset_broker_pools()
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env
        app.conf.broker_url = saved


@pytest.fixture
def broker_at() -> Callable[[str], AbstractContextManager[None]]:
    """``with broker_at(url):`` sends this process's Celery messages to ``url`` inside the block."""
    return _broker_at
