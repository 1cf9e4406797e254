"""Fixtures for benchmark tests: the deployments tests' devcluster (gpu-mixed, module scope) and helpers to deploy
a model whose simulated pods have a known latency, failure rate or stall (their DEVCLUSTER_* env)."""

from __future__ import annotations

import time

from core.choices import RunStatus
from core.models import RunStep
from deployments.models import Benchmark, Deployment
from tests.deployments.conftest import (  # noqa: F401 - fixtures
    _loopback,
    cluster,
    finished,
    gpu,
    gpu_baseline,
    gpu_reset,
)

MODEL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}
# The simulator queues requests beyond --max-num-seqs (placement sizes it for the deployment's concurrency);
# calibration at 32+ streams must measure latency, not queueing.
ENGINE_ARGS = ["--max-num-seqs=1024"]


def deploy(api, target, name: str, env: dict[str, str], **extra) -> tuple[Deployment, dict]:
    """Deploy through the API and wait until the deploy run ends; returns the deployment and the 202 body."""
    body = {"cluster": target.pk, "name": name, **MODEL, "engine_args": ENGINE_ARGS, "env": env, **extra}
    response = api.post("/deployments/deploy", body, format="json")
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"], timeout=120)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Deployment.objects.get(pk=response.json()["deployment_id"]), response.json()


def benchmark(api, deployment: Deployment, timeout: float = 90, **options) -> tuple[Benchmark, dict]:
    """POST /deployments/{id}/benchmark, wait for the run; returns the row and GET /benchmarks/{id}."""
    response = api.post(f"/deployments/{deployment.pk}/benchmark", options, format="json")
    assert response.status_code == 202, response.json()
    finished(response.json()["run_id"], timeout=timeout)
    detail = api.get(f"/benchmarks/{response.json()['benchmark_id']}")
    assert detail.status_code == 200
    return Benchmark.objects.get(pk=response.json()["benchmark_id"]), detail.json()


def wait_progress(run_id: str, minimum: float, timeout: float = 30) -> float:
    """Wait until the run's benchmark step reports at least `minimum` progress (0-1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = RunStep.objects.filter(run_id=run_id, name="benchmark").values_list("progress", flat=True)
        if progress and progress[0] >= minimum:
            return progress[0]
        time.sleep(0.1)
    raise AssertionError(f"benchmark step of run {run_id} did not reach {minimum:.0%} in {timeout} s")
