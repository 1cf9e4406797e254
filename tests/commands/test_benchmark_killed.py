"""`manage.py benchmark` stopped mid-run: its Benchmark row never stays `running`.

The command carries out a ``deployment.benchmark`` run in its own process (no worker runs the requests). SIGINT and
SIGTERM stop the requests and close the row and the run as cancelled at once, keeping what finished; a process
killed outright (SIGKILL) stops beating, and the reaper closes its run and row as failed, naming the process,
instead of leaving them running or handing the benchmark to a worker. Each test synchronises on rows: the
benchmark has measured requests before the signal goes out.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core import workflow
from core.choices import RunStatus
from core.models import Run, RunStep
from deployments.choices import BenchmarkStatus, DeploymentStatus
from deployments.models import Benchmark, Deployment
from tests.worker import wait_for

from .conftest import ROOT, command_env

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The devcluster inference simulator on its own: each request takes about half a second."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devcluster.sim.inference", "--port", str(port), "--model", "sim-model",
         "--ttft-ms", "20", "--itl-ms", "20", "--max-num-seqs", "64", "--loop", "asyncio"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, "the simulator exited"
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=30, what="the inference simulator")
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def deployment(endpoint) -> Deployment:
    cluster = Cluster.objects.create(name="bench", status=ClusterStatus.AVAILABLE)
    return Deployment.objects.create(
        name="llm", cluster=cluster, namespace="bud-llm-00000001", model_name="sim-model",
        status=DeploymentStatus.RUNNING, endpoint_url=endpoint,
    )  # fmt: skip


def _start(deployment: Deployment) -> subprocess.Popen:
    """The command as an operator runs it, long enough (about 10 minutes) that only a signal ends it."""
    env = command_env(BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS="1")
    return subprocess.Popen(
        [sys.executable, "manage.py", "benchmark", deployment.name, "--requests", "2000", "--concurrency", "2",
         "--output-tokens", "25", "--endpoint", "completions", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _measuring(deployment: Deployment, proc: subprocess.Popen) -> Benchmark:
    """The command's benchmark once it is running and its run shows requests done."""

    def ready() -> Benchmark | None:
        assert proc.poll() is None, proc.communicate()
        row = Benchmark.objects.filter(deployment=deployment, status=BenchmarkStatus.RUNNING).first()
        if row is None or row.run_id is None:
            return None
        step = RunStep.objects.filter(run_id=row.run_id, name="benchmark").first()
        return row if step is not None and step.progress > 0 else None

    return wait_for(ready, timeout=60, what="the command's benchmark to measure requests")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_close_the_benchmark_as_cancelled_at_once(deployment, signum):
    proc = _start(deployment)
    try:
        row = _measuring(deployment, proc)
        run = Run.objects.get(pk=row.run_id)
        assert (run.kind, run.status) == ("deployment.benchmark", RunStatus.RUNNING)
        assert f"pid {proc.pid}" in run.params["owner"]

        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 128 + signum, out + err
    row.refresh_from_db()
    assert (row.status, row.partial) == (BenchmarkStatus.CANCELLED, True)
    assert row.successful_requests and row.successful_requests < 2000
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.steps.get(name="benchmark").status == "cancelled"
    assert f"Benchmark {row.pk}: cancelled (partial: stopped early)" in out
    assert "TTFT" in out  # what finished is printed


def test_a_killed_command_is_closed_by_the_reaper_not_resumed(deployment, worker):
    proc = _start(deployment)
    try:
        row = _measuring(deployment, proc)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    row.refresh_from_db()
    assert row.status == BenchmarkStatus.RUNNING  # nothing in the process could close it

    # The reaper (beat runs it every 5 s) finds the run silent for WORKFLOW_STALE_AFTER and closes it; the run's
    # cleanup, on a worker, records the outcome on the benchmark.
    def closed() -> Benchmark | None:
        workflow.reap_stale_runs()
        row.refresh_from_db()
        return row if row.status not in BenchmarkStatus.active() else None

    wait_for(closed, timeout=60, interval=0.5, what="the reaper to close the killed command's benchmark")
    run = Run.objects.get(pk=row.run_id)
    assert run.status == RunStatus.FAILED
    assert f"pid {proc.pid}" in run.error and "stopped" in run.error
    assert row.status == BenchmarkStatus.FAILED and row.error == run.error
    # Closed, not resumed: no worker ran the benchmark step again.
    assert run.steps.get(name="benchmark").attempt == 1
    assert not run.events.filter(status="resumed").exists()
