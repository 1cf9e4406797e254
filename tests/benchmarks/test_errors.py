"""Errors are counted and shown with their messages: a simulator failing 10 % of requests (measured with
`manage.py benchmark`, the same service without a worker) and a stalled stream hitting the idle timeout."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from deployments.models import Benchmark

from .conftest import benchmark, deploy

pytestmark = pytest.mark.django_db(transaction=True)

FAILURE = "HTTP 500: Simulated engine failure (DEVCLUSTER_FAIL_RATE)"


def test_a_tenth_of_requests_failing_shows_as_ten_percent_failures(api, cluster):
    env = {"DEVCLUSTER_TTFT_MS": "20", "DEVCLUSTER_ITL_MS": "5", "DEVCLUSTER_FAIL_RATE": "0.1"}
    deployment, _ = deploy(api, cluster, "flaky", env)
    out = io.StringIO()
    call_command(
        "benchmark", deployment.name, "--requests", "50", "--concurrency", "8", "--output-tokens", "4",
        "--endpoint", "completions", "--sweep", "4,8", "--no-progress", stdout=out,
    )  # fmt: skip
    row = Benchmark.objects.get(deployment=deployment)
    # Carried out by the command's own process, as a run of its own (no worker ran it).
    assert row.status == "succeeded" and row.run.status == "succeeded"
    assert row.run.params["owner"].startswith("manage.py benchmark (pid ")
    # 50 consecutive requests per sweep point: exactly every tenth failed, with the server's message.
    assert [(p["concurrency"], p["successful_requests"], p["failed_requests"]) for p in row.sweep] == [
        (4, 45, 5),
        (8, 45, 5),
    ]
    assert (row.successful_requests, row.failed_requests) == (45, 5)
    assert row.summary["errors"] == [{"message": FAILURE, "count": 5}]
    text = out.getvalue()
    assert "failed requests          5" in text and f"5 x {FAILURE}" in text
    assert "TTFT" in text and "p99" in text and "concurrency" in text


def test_a_stalled_stream_hits_the_idle_timeout_and_counts_as_an_error(api, cluster, gpu):
    # The runtime chart refuses env names that look like secrets ("...TOKENS"), so the stall is set on the
    # devcluster's simulator config, which applies to serving pods started while it is set.
    gpu.sim_config.stall_after_tokens = 3
    try:
        deployment, _ = deploy(
            api, cluster, "stalling", {"DEVCLUSTER_TTFT_MS": "20", "DEVCLUSTER_ITL_MS": "5"}
        )
    finally:
        gpu.sim_config.stall_after_tokens = None
    row, detail = benchmark(
        api, deployment, requests=4, concurrency=4, output_tokens=8, idle_timeout=0.5, endpoint="completions"
    )
    # No request succeeded: the benchmark (and its run) failed, saying why; the errors are counted.
    assert row.status == "failed" and row.run.status == "failed", row.error
    assert detail["errors"] == [{"message": "timeout: no data for 0.5 s (stalled stream)", "count": 4}], (
        detail["error"],
        row.run.error,
    )
    assert detail["failed_requests"] == 4 and "stalled stream" in detail["error"]
