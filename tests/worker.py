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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from devcluster.real.controlplane import die_with_parent

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """DATABASE_URL of the database pytest-django created (test_<name>)."""
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


def worker_queues() -> list[str]:
    """Every queue the service sends to: the default one and the poll checks' (``WORKFLOW_POLL_QUEUE``)."""
    return ["celery", settings.WORKFLOW_POLL_QUEUE]


class WorkerProcess:
    """A worker subprocess; by default it consumes every queue (one pool for the tests' runs), ``queues`` narrows
    it (a benchmark's poll pool beside a main one)."""

    def __init__(
        self,
        *,
        concurrency: int = 2,
        name: str = "w1",
        extra_env: dict | None = None,
        queues: list[str] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.name = name
        self.extra_env = extra_env or {}
        self.queues = queues
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
                "-P", "prefork", "-Q", ",".join(self.queues or worker_queues()),
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # A test session killed outright must not leave its worker behind, consuming the next session's
            # messages from the same broker database (its pool processes end with it).
            preexec_fn=die_with_parent,
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


def broker_drained() -> bool:
    """True when the test broker's queue is empty and the worker holds no message (running, reserved or
    scheduled): every message sent so far has been handled."""
    import redis

    from budcluster_site.celery import app

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    if any(client.llen(queue) for queue in worker_queues()):
        return False
    inspect = app.control.inspect(timeout=1.0)
    held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
    if any(answer is None for answer in held):  # no worker answered: nothing can be concluded
        return False
    return not any(tasks for answer in held for tasks in answer.values())


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


@contextmanager
def armed_worker(
    session_worker, failpoints: list[str], *, name: str, extra_env: dict | None = None
) -> Iterator[WorkerProcess]:
    """A worker with ``WORKFLOW_FAILPOINTS`` armed (``[kind/]step:pause|crash|crash-after``, see
    ``core.workflow``) as the only consumer: the session worker is stopped meanwhile and started again after."""
    session_worker.stop()
    armed = WorkerProcess(
        name=f"armed-{name}", extra_env={**(extra_env or {}), "WORKFLOW_FAILPOINTS": ",".join(failpoints)}
    )
    try:
        yield armed.start()
    finally:
        armed.kill()
        session_worker.start()


def kill_worker_during_step(
    session_worker,
    start,
    step: str,
    *,
    name: str,
    extra_env: dict,
    timeout: float = 60,
    action: str = "crash-after",
):
    """Run `start()` (which returns (subject, run_id)) on a worker that dies inside `step`: its failpoint
    SIGKILLs it (``crash``: before the body; ``crash-after``: after the body, before the step's outcome is
    recorded) or, with ``pause``, the test SIGKILLs it while the step is held. The session worker, stopped
    meanwhile, comes back as the replacement; with the reaper it must finish the run. Returns (subject,
    finished run)."""
    from core import workflow

    session_worker.stop()
    doomed = WorkerProcess(
        name=f"doomed-{name}", extra_env={**extra_env, "WORKFLOW_FAILPOINTS": f"{step}:{action}"}
    )
    try:
        doomed.start()
        subject, run_id = start()
        wait_for(
            lambda: workflow.failpoint_reached(run_id, step), timeout=timeout, what=f"the run to reach {step}"
        )
        if action == "pause":
            doomed.kill()
        wait_for(lambda: doomed.proc.poll() is not None, timeout=30, what="the worker to die")
    finally:
        doomed.kill()  # the rest of its process group, if any
        session_worker.start()
    wait_for(
        lambda: workflow.reap_stale_runs(), timeout=30, interval=0.2, what="the reaper to resume the run"
    )
    return subject, run_finished(run_id, timeout)


def crash_inside_each_step(
    session_worker,
    start,
    steps: list[str],
    *,
    name: str,
    extra_env: dict,
    timeout: float = 240,
    reap: bool = True,
):
    """Run `start()` (which returns (subject, run_id)) on workers that SIGKILL themselves inside each of `steps`
    (``crash-after``: the body ran, its outcome is not recorded). Each dead worker is replaced by a fresh one
    armed the same way (a failpoint acts on a step's first attempt only, so the run moves on); the reaper
    resumes the run each time (called here, or by beat when ``reap`` is False). Returns (subject, finished run,
    number of workers killed). The session worker is stopped meanwhile."""
    from core import workflow
    from core.choices import RunStatus
    from core.models import Run

    env = {**extra_env, "WORKFLOW_FAILPOINTS": ",".join(f"{step}:crash-after" for step in steps)}
    session_worker.stop()
    kills = 0
    current = WorkerProcess(name=f"crashing-{name}", extra_env=env)
    try:
        current.start()
        subject, run_id = start()
        deadline = time.monotonic() + timeout
        while (run := Run.objects.get(pk=run_id)).status not in RunStatus.terminal():
            if time.monotonic() > deadline:
                where = "; ".join(f"{s.name}={s.status}" for s in run.steps.order_by("order"))
                raise AssertionError(f"run {run_id} not finished after {timeout:g}s ({kills} kills): {where}")
            if current.proc.poll() is not None:
                current.kill()
                kills += 1
                current = WorkerProcess(name=f"crashing-{name}-{kills}", extra_env=env).start()
            if reap:
                workflow.reap_stale_runs()
            time.sleep(0.2)
    finally:
        current.kill()
        session_worker.start()
    return subject, run, kills
