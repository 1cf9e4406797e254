"""The suite on several pytest-xdist workers (`make test` runs two): what each worker must have to itself.

Under xdist each worker is a separate test session with its own Celery worker subprocess, so nothing those
sessions write may be shared:

- **database**: pytest-django already gives each worker its own test database (``test_<name>_gw<N>``);
- **broker**: each worker gets its own Redis database, the configured one minus the worker's index
  (db 15 → 15 and 14), or its Celery subprocess would take the other session's tasks (and ``_clean_broker``
  would flush them);
- **crypto test keys**: each worker keeps its own under ``var/test-keys/<worker>/``; two sessions generating
  the same files at once would each cache a different key.

``isolate_worker()`` runs when tests/conftest.py is imported: Django's settings are loaded by then (pytest-django
reads them before any conftest), so it changes the settings and the Celery app's configuration in place, and the
environment the Celery subprocesses inherit. Nothing has connected to the broker at that point.

**Scheduling** (``--dist loadgroup``): every test module runs whole on one worker, so its module fixtures
(devclusters, registered clusters) start once; every test using the real control plane (the session-scoped
``real_cluster`` fixture), with the rest of its module, runs on one worker, so one control plane starts, not
one per worker.

**Summaries**: a section a conftest prints at the end of the session (the devcluster fidelity table) is
computed in the worker that ran the tests; ``add_summary`` hands it to the controller, which prints it.

tests/conftest.py re-exports the hooks below.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest

REAL_CONTROL_PLANE_GROUP = "real-control-plane"
_SUMMARY_KEY = "budcluster_summaries"
_summaries: list[tuple[str, list[str]]] = []


def worker_index() -> int | None:
    """0, 1, … inside an xdist worker (``PYTEST_XDIST_WORKER=gw0`` …), None otherwise."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") else None


def broker_url_for_worker(url: str, index: int) -> str:
    """The Redis URL with its database number lowered by ``index`` (``redis://h:6379/15`` → ``…/14`` for 1)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise pytest.UsageError(f"parallel test workers need a Redis broker, not {parts.scheme}://")
    db = int(parts.path.lstrip("/") or 0) - index
    if db < 0:
        raise pytest.UsageError(f"not enough Redis databases below {url} for {index + 1} test workers")
    return urlunsplit(parts._replace(path=f"/{db}"))


def isolate_worker() -> None:
    """Give this xdist worker its own broker database and crypto test keys (no-op outside xdist)."""
    index = worker_index()
    if index is None:
        return
    from django.conf import settings

    from budcluster_site.celery import app

    worker = os.environ["PYTEST_XDIST_WORKER"]
    broker = broker_url_for_worker(settings.CELERY_BROKER_URL, index)
    settings.CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"] = broker
    app.conf.broker_url = broker
    for name in ("CRYPTO_SYMMETRIC_KEY_PATH", "CRYPTO_PRIVATE_KEY_PATH", "CRYPTO_RETIRED_KEYS_DIR"):
        head, tail = os.path.split(str(getattr(settings, name)))
        path = os.path.join(head, worker, tail)
        setattr(settings, name, path)
        os.environ[name] = path


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist") or config.getoption("dist", "no") != "loadgroup":
        return

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    # A module with any test on the real control plane goes whole into its group (module fixtures start once).
    real = {module(item) for item in items if "real_cluster" in getattr(item, "fixturenames", ())}
    for item in items:
        group = REAL_CONTROL_PLANE_GROUP if module(item) in real else module(item)
        item.add_marker(pytest.mark.xdist_group(group))


def add_summary(config: pytest.Config, title: str, lines: list[str]) -> None:
    """Print ``lines`` under ``title`` at the end of the run, from a worker or a plain session alike."""
    if not lines:
        return
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller prints it
        config.workeroutput.setdefault(_SUMMARY_KEY, []).append((title, lines))
    else:
        _summaries.append((title, lines))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    _summaries.extend(tuple(s) for s in getattr(node, "workeroutput", {}).get(_SUMMARY_KEY, []))


def pytest_terminal_summary(terminalreporter) -> None:
    for title, lines in _summaries:
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
