"""Statistics against small examples worked out by hand."""

from __future__ import annotations

import json

import pytest

from deployments import benchstats
from deployments.loadgen import BenchmarkResult, LoadSettings, RequestRecord


def records() -> list[RequestRecord]:
    return [
        # TTFT 100 ms, 5 tokens over 500 ms: TPOT (500 - 100) / 4 = 100 ms, 10 tokens/s for this user.
        RequestRecord(
            start=0.0, ttft=0.1, itl=[0.1] * 4, e2e=0.5, input_tokens=10, output_tokens=5, success=True
        ),
        # TTFT 300 ms, 3 tokens over 700 ms: TPOT 200 ms, 3 / 0.7 tokens/s.
        RequestRecord(
            start=0.2, ttft=0.3, itl=[0.2] * 2, e2e=0.7, input_tokens=20, output_tokens=3, success=True
        ),
        RequestRecord(start=0.4, error="HTTP 500: boom"),
        RequestRecord(start=0.6, error="timeout: no data for 1 s (stalled stream)"),
        RequestRecord(start=0.8, error="HTTP 500: boom"),
    ]


def result(recs: list[RequestRecord] | None = None, duration: float = 2.0) -> BenchmarkResult:
    return BenchmarkResult(
        LoadSettings(base_url="http://127.0.0.1:1", model="m", concurrency=4),
        records() if recs is None else recs,
        duration,
    )


def test_percentiles_interpolate_between_ranks():
    assert benchstats.percentile([1.0, 2.0, 3.0, 4.0], 25) == pytest.approx(1.75)
    assert benchstats.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert benchstats.percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert benchstats.percentile([7.0], 95) == 7.0
    assert benchstats.describe([4.0, 1.0, 3.0, 2.0]) == {
        "mean": 2.5,
        "median": 2.5,
        "p25": 1.75,
        "p75": 3.25,
        "p95": pytest.approx(3.85),
        "p99": pytest.approx(3.97),
        "min": 1.0,
        "max": 4.0,
    }
    assert set(benchstats.describe([]).values()) == {None}


def test_summary_fields_and_values():
    s = benchstats.summarize(result())
    assert s["duration_s"] == 2.0
    assert (s["successful_requests"], s["failed_requests"]) == (2, 3)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (30, 8)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["input_throughput"] == pytest.approx(15.0)
    assert s["output_throughput"] == pytest.approx(4.0)
    assert (s["mean_ttft_ms"], s["median_ttft_ms"], s["p25_ttft_ms"], s["p75_ttft_ms"]) == pytest.approx(
        (200.0, 200.0, 150.0, 250.0)
    )
    assert (s["min_ttft_ms"], s["max_ttft_ms"]) == pytest.approx((100.0, 300.0))
    assert s["mean_tpot_ms"] == pytest.approx(150.0)
    # ITL pools every gap: [100, 100, 100, 100, 200, 200] ms.
    assert s["mean_itl_ms"] == pytest.approx(800 / 6)
    assert s["median_itl_ms"] == pytest.approx(100.0)
    assert s["p75_itl_ms"] == pytest.approx(175.0)
    assert s["mean_e2e_ms"] == pytest.approx(600.0)
    assert s["mean_output_throughput_per_user"] == pytest.approx((10 + 3 / 0.7) / 2)
    assert s["min_output_throughput_per_user"] == pytest.approx(3 / 0.7)
    assert s["errors"] == [
        {"message": "HTTP 500: boom", "count": 2},
        {"message": "timeout: no data for 1 s (stalled stream)", "count": 1},
    ]
    for metric in benchstats.METRICS:
        assert all(f"{stat}_{metric}" in s for stat in benchstats.STATS)
    assert s["partial"] is False and s["concurrency"] == 4
    json.dumps(s)  # storable as is


def test_targets_pass_or_fail_within_the_margin():
    s = benchstats.summarize(result(), targets={"ttft_ms": 150, "e2e_ms": 500, "throughput_per_user": 12})
    # ttft 200 <= 150 * 1.5; e2e 600 <= 750; per-user 7.14 >= 12 * 0.5
    assert s["passed"] is True and s["target_margin"] == 0.5
    assert s["targets"]["ttft_ms"] == {"target": 150, "limit": 225.0, "measured": 200.0, "passed": True}

    strict = benchstats.summarize(result(), targets={"ttft_ms": 150}, margin=0.2)  # limit 180 < 200
    assert strict["passed"] is False and strict["targets"]["ttft_ms"]["limit"] == pytest.approx(180.0)

    slow_users = benchstats.summarize(result(), targets={"throughput_per_user": 20})  # 7.14 < 10
    assert slow_users["passed"] is False


def test_no_successful_request_never_passes():
    failed = [RequestRecord(start=0.0, error="HTTP 503: down")]
    s = benchstats.summarize(result(failed), targets={"ttft_ms": 1000})
    assert s["passed"] is False
    assert s["mean_ttft_ms"] is None and s["targets"]["ttft_ms"]["passed"] is False
    assert benchstats.summarize(result(failed))["passed"] is False
    with pytest.raises(ValueError, match="unknown targets"):
        benchstats.evaluate_targets(s, {"tpot_ms": 10})


def test_zero_duration_gives_zero_throughput():
    assert benchstats.summarize(result([], duration=0.0))["request_throughput"] == 0.0


def test_samples_round_trip_compactly():
    encoded = benchstats.encode_samples(records())
    assert encoded["itl_ms"][0] == [100, 100, 100, 100]
    assert encoded["errors"] == ["HTTP 500: boom", "timeout: no data for 1 s (stalled stream)"]
    assert encoded["error"] == [None, None, 0, 1, 0]
    decoded = benchstats.decode_samples(json.loads(json.dumps(encoded)))
    again = benchstats.summarize(result(decoded))
    original = benchstats.summarize(result())
    for key in ("mean_ttft_ms", "p75_itl_ms", "mean_tpot_ms", "failed_requests"):
        assert again[key] == pytest.approx(original[key])
    assert again["errors"] == original["errors"]
    with pytest.raises(ValueError, match="version"):
        benchstats.decode_samples({**encoded, "version": 99})
