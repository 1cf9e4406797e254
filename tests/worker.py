"""A real Celery worker in a subprocess, pointed at the test database and the test broker.

Workflow tests need the real thing (acks_late, redelivery, chords, a worker killed with SIGKILL), so they talk to
a worker process through Redis rather than running tasks eagerly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """DATABASE_URL of the database pytest-django created (test_<name>)."""
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


class WorkerProcess:
    def __init__(self, *, concurrency: int = 2, name: str = "w1", extra_env: dict | None = None) -> None:
        self.concurrency = concurrency
        self.name = name
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = ROOT / "var" / "test-logs" / f"worker-{name}-{os.getpid()}.log"

    def start(self) -> WorkerProcess:
        if self.proc and self.proc.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DATABASE_URL": test_database_url(), **self.extra_env}
        env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "budcluster_site", "worker", "-l", "INFO",
                "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--without-mingle", "--without-gossip",
                "-P", "prefork",
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited early; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
                )
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crashed machine would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log and not log.closed:
            log.close()


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_finished(run_id, timeout: float = 60.0):
    """The run once it reached a terminal status; on timeout the failure says where each step stands."""
    from core.choices import RunStatus
    from core.models import Run

    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    try:
        return wait_for(done, timeout=timeout, interval=0.1, what=f"run {run_id} to finish")
    except AssertionError:
        run = Run.objects.get(pk=run_id)
        steps = "; ".join(f"{s.name}={s.status} {s.message[:200]!r}" for s in run.steps.order_by("order"))
        raise AssertionError(
            f"run {run_id} did not finish within {timeout:g} s: {run.status} [{steps}]"
        ) from None


def kill_worker_during_step(
    session_worker, start, step: str, *, name: str, extra_env: dict, timeout: float = 60
):
    """Run `start()` (which returns (subject, run_id)) on a worker that is SIGKILLed once `step` is running;
    a replacement worker and the reaper must finish the run. Returns (subject, finished run). The session
    worker is stopped meanwhile (so the doomed one takes the step) and started again afterwards."""
    from core import workflow
    from core.choices import StepStatus
    from core.models import Run

    session_worker.stop()
    doomed = WorkerProcess(name=f"doomed-{name}", extra_env=extra_env).start()
    replacement = None
    try:
        subject, run_id = start()
        run = Run.objects.get(pk=run_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # as tight as a poll can be: the step lasts milliseconds
            if run.steps.filter(name=step, status=StepStatus.RUNNING).exists():
                break
            time.sleep(0.005)
        doomed.kill()
        replacement = WorkerProcess(name=f"replacement-{name}", extra_env=extra_env).start()
        wait_for(
            lambda: workflow.reap_stale_runs(), timeout=30, interval=0.5, what="the reaper to resume the run"
        )
        return subject, run_finished(run_id, timeout)
    finally:
        doomed.kill()
        if replacement:
            replacement.stop()
        session_worker.start()
