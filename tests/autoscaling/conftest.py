"""Fixtures of the autoscaling tests: the deployments tests' devcluster (gpu-mixed, module scope), the standalone
inference simulator, a real ``celery beat`` evaluating the policies every second, and sustained load on an endpoint.

The beat is the production one (django-celery-beat's DatabaseScheduler reading the ``Deployment autoscaling``
periodic task from the test database) with the task's interval set to one second, so a test waits on what the
evaluations record (conditions, events, replica counts), never on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from django.conf import settings

from deployments.loadgen import LoadSettings, run_benchmark_sync
from tests.benchmarks.conftest import deploy  # noqa: F401 - helper re-exported for the tests
from tests.deployments.conftest import (  # noqa: F401 - fixtures
    _loopback,
    cluster,
    gpu,
    gpu_baseline,
    gpu_reset,
)
from tests.loadgen.conftest import simulator  # noqa: F401 - fixture
from tests.worker import ROOT, test_database_url, wait_for

BEAT_TASK = "Deployment autoscaling"  # the periodic task migration 0009 creates


@pytest.fixture
def beat(worker) -> Iterator[subprocess.Popen]:
    """``celery beat`` in a subprocess, sending ``deployments.autoscale`` every second to the real worker."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    # The transactional tests empty every table, the migration's row included: put it back, at one second.
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name=BEAT_TASK, defaults={"task": "deployments.autoscale", "interval": every, "enabled": True}
    )
    log_path = ROOT / "var" / "test-logs" / f"beat-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "budcluster_site", "beat", "-l", "INFO",
                "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or b"deployments.autoscale" in log_path.read_bytes(),
            timeout=30,
            what="celery beat to send its first autoscaling evaluation",
        )
        assert proc.poll() is None, f"celery beat exited; see {log_path}"
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


class Load:
    """Closed-loop streaming load (``concurrency`` streams back to back) on an endpoint until stopped."""

    def __init__(
        self, base_url: str, model: str, *, concurrency: int, output_tokens: int = 24, requests: int = 3000
    ) -> None:
        # Requests are prepared (prompts drawn, bodies encoded) before the first is sent: a few thousand take
        # milliseconds and last over a minute at these rates; a million would delay the load by seconds.
        self.settings = LoadSettings(
            base_url=base_url, model=model, endpoint="completions", num_requests=requests,
            concurrency=concurrency, input_tokens=16, output_tokens=output_tokens, timeout_s=60.0,
            idle_timeout_s=30.0,
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> Load:
        self._stop.clear()

        def drive() -> None:
            try:
                run_benchmark_sync(self.settings, cancel=self._stop)
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self._thread = threading.Thread(target=drive, name="autoscaling-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the load generator did not stop"
        if self.error is not None:
            raise self.error
