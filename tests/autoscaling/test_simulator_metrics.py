"""The devcluster inference simulator serves vLLM's autoscaling signals, and they respond to load: waiting requests
beyond ``--max-num-seqs``, a TTFT histogram that counts time queued (as vLLM measures it from arrival), and the
KV-cache usage of the running requests under both of vLLM's names."""

from __future__ import annotations

import urllib.request

import pytest

from deployments.autoscaling import bucket_delta, histogram, parse_samples, quantile
from tests.worker import wait_for

from .conftest import Load

TTFT_BUCKETS = "vllm:time_to_first_token_seconds_bucket"
NAMES = {
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    TTFT_BUCKETS,
}
TTFT_MS, ITL_MS, OUTPUT = 50, 20, 10  # one request: 50 + 9 x 20 = 230 ms, holding a slot the whole time


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        samples = parse_samples(answer.read().decode(), NAMES)
    values = {name: sum(v for _labels, v in samples.get(name, [])) for name in NAMES - {TTFT_BUCKETS}}
    values["ttft"] = histogram(samples, "vllm:time_to_first_token_seconds")
    return values


@pytest.fixture
def url(simulator) -> str:
    return simulator(max_num_seqs=2, ttft_ms=TTFT_MS, itl_ms=ITL_MS, kv_cache_tokens=200)


def test_signals_rise_with_load_and_fall_after(url):
    idle = metrics(url)
    assert (idle["vllm:num_requests_waiting"], idle["vllm:kv_cache_usage_perc"]) == (0, 0)

    # Two streams fit the two slots: nothing waits, and the first token comes after the configured TTFT.
    load = Load(url + "/v1", "sim-model", concurrency=2, output_tokens=OUTPUT).start()
    before = metrics(url)["ttft"]
    wait_for(lambda: metrics(url)["ttft"]["+Inf"] >= before["+Inf"] + 10, timeout=30, what="10 requests")
    unqueued = metrics(url)
    load.stop()
    assert unqueued["vllm:num_requests_waiting"] == 0
    assert quantile(0.95, bucket_delta(unqueued["ttft"], before)) <= 0.1

    # Six streams on two slots: four wait, and their TTFT includes the wait (about two requests' time, 460 ms).
    load = Load(url + "/v1", "sim-model", concurrency=6, output_tokens=OUTPUT).start()
    try:
        busy = wait_for(
            lambda: (m := metrics(url))["vllm:num_requests_waiting"] == 4 and m, timeout=30, what="4 waiting"
        )
        assert busy["vllm:num_requests_running"] == 2
        # Two running requests hold their prompts and the tokens generated so far, of 200 tokens of KV cache.
        assert 0 < busy["vllm:kv_cache_usage_perc"] <= 2 * (16 + 3 + OUTPUT) / 200
        assert busy["vllm:gpu_cache_usage_perc"] == busy["vllm:kv_cache_usage_perc"]
        queued_from = metrics(url)["ttft"]
        wait_for(
            lambda: metrics(url)["ttft"]["+Inf"] >= queued_from["+Inf"] + 12, timeout=30, what="12 requests"
        )
        p95 = quantile(0.95, bucket_delta(metrics(url)["ttft"], queued_from))
    finally:
        load.stop()
    assert p95 >= 0.3

    after = wait_for(
        lambda: (m := metrics(url))["vllm:num_requests_running"] == 0 and m,
        timeout=30,
        what="the queue to drain",
    )
    assert (after["vllm:num_requests_waiting"], after["vllm:kv_cache_usage_perc"]) == (0, 0)
