"""Fixtures of the audit log tests."""

from __future__ import annotations

import pytest

from tests.api.conftest import _broker_at


@pytest.fixture(autouse=True)
def _runs_stay_queued(request):
    """The runs a test starts go to an in-memory broker, unless it uses the real worker: the session's worker, once
    another test has started it, must not carry them out while the database is flushed under it."""
    if "worker" in request.fixturenames:
        yield
        return
    with _broker_at("memory://"):
        yield
