"""`benchmarks/peer_compare.py` without the peer: what it reads from AIPerf's per-request export, the workload it
asks AIPerf for, the error it prints against the truth, and the pinned peer environment.

The full comparison (simulator, both clients, 64-1,024 streams) is a benchmark and prints figures; these checks
cover the parts whose mistakes would silently skew that table.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from benchmarks import peer_compare
from benchmarks.peer_compare import ClientRun, Workload
from deployments.loadgen import RequestRecord


def _record(
    phase: str,
    worker: str,
    ttft: float | None = None,
    gaps: list[float] | None = None,
    error: dict | None = None,
    due_s: float = 0.0,
    sent_s: float = 0.0,
    done_s: float = 0.0,
) -> str:
    # The shape AIPerf 0.13 writes to profile_export.jsonl (fields the script does not read left out).
    meta = {
        "x_request_id": "6a779174-9163-4f57-a151-e68d47b23c59",
        "credit_issued_ns": int(due_s * 1e9),
        "request_start_ns": int(sent_s * 1e9),
        "request_end_ns": int(done_s * 1e9),
        "worker_id": worker,
        "record_processor_id": "record_processor_0a7fc396",
        "benchmark_phase": phase,
        "phase_kind": phase,
        "was_cancelled": False,
    }
    rec: dict = {"metadata": meta, "metrics": {}}
    if ttft is not None:
        rec["metrics"] = {
            "time_to_first_token": {"value": ttft, "unit": "ms"},
            "inter_chunk_latency": {"value": gaps or [], "unit": "ms"},
            # a per-request average: not what is compared
            "inter_token_latency": {"value": 99.0, "unit": "ms"},
            "usage_completion_tokens": {"value": len(gaps or []) + 1, "unit": "tokens"},
        }
    if error is not None:
        rec["error"] = error
    return json.dumps(rec)


def test_only_the_profiling_phase_is_counted_and_failures_keep_their_reason():
    boom = {"code": 500, "type": "Internal Server Error", "message": '{"error": {"message": "boom"}}'}
    lines = [
        _record("warmup", "worker_a", 900.0, [500.0, 500.0]),  # warm-up: exported, never counted
        _record("profiling", "worker_a", 203.0, [21.4, 18.2, 20.5], due_s=10.0, sent_s=10.0, done_s=11.0),
        # due at 10 s but sent 0.5 s late: the worker could not keep up
        _record("profiling", "worker_b", 201.0, [20.0, 19.9, 20.1], due_s=10.0, sent_s=10.5, done_s=11.5),
        _record("profiling", "worker_b", error=boom, due_s=11.0, sent_s=11.0, done_s=11.0),
        "",
    ]
    run = peer_compare.parse_peer_records("\n".join(lines), concurrency=64)
    assert (run.succeeded, run.failed, run.requests) == (2, 1, 3)
    assert run.ttft_ms == [203.0, 201.0]
    assert run.itl_ms == [21.4, 18.2, 20.5, 20.0, 19.9, 20.1]  # every gap, not the per-request averages
    assert run.errors == {"500 Internal Server Error": 1}
    assert run.workers == 2
    assert run.lags_ms == [0.0, 500.0]
    assert run.ttft_from_scheduled_ms == [203.0, 701.0]
    assert run.in_flight == 2.0 / 1.5  # two 1-second requests within 10.0 .. 11.5 s: fewer than 2 in flight


def test_our_records_reduce_the_same_way():
    ok = RequestRecord(start=0.0, ttft=0.2015, itl=[0.02, 0.021], e2e=0.25, output_tokens=3, success=True)
    late = RequestRecord(start=0.3, ttft=0.2, itl=[0.02], e2e=0.5, output_tokens=2, success=True)
    bad = RequestRecord(start=0.0, error="HTTP 500: boom")
    records_lag = hasattr(ok, "scheduled")  # load generators that record when each request was due
    if records_lag:
        ok.scheduled, late.scheduled = 0.0, 0.25
    run = peer_compare.from_records([ok, bad, late], 64, "budcluster")
    assert (run.succeeded, run.failed) == (2, 1)
    assert run.ttft_ms == [201.5, 200.0]
    assert [round(g, 6) for g in run.itl_ms] == [20.0, 21.0, 20.0]
    assert run.errors == {"HTTP 500: boom": 1}
    assert run.in_flight == (0.25 + 0.5) / 0.8
    if records_lag:
        assert [round(x, 6) for x in run.lags_ms] == [0.0, 50.0]


def test_the_table_prints_each_statistic_beside_its_error_against_the_truth():
    run = ClientRun(
        "aiperf 0.13.0", 256, ttft_ms=[210.0] * 98 + [410.0] * 2, itl_ms=[20.0] * 50 + [22.0] * 50
    )
    run.succeeded = 100
    row = peer_compare.table_row(run, ttft_truth=200.0, itl_truth=20.0)
    cells = re.findall(r"(-?\d+\.\d)\s+([+-]\d+\.\d)", row)
    # TTFT mean 214 ms (+7 %), p50 210 (+5 %), p99 410 (+105 %); ITL mean 21 (+5 %), p50 21 (+5 %), p99 22 (+10 %)
    assert cells == [
        ("214.0", "+7.0"), ("210.0", "+5.0"), ("410.0", "+105.0"),
        ("21.0", "+5.0"), ("21.0", "+5.0"), ("22.0", "+10.0"),
    ]  # fmt: skip
    assert row.split()[:9] == [
        "aiperf",
        "0.13.0",
        "256",
        "1",
        "0.0",
        "100",
        "0",
        "-",
        "-",
    ]  # no spans, no lags
    assert len(row) == len(peer_compare.HEADER)


def test_a_client_that_measured_nothing_shows_dashes_not_numbers():
    row = peer_compare.table_row(
        ClientRun("aiperf 0.13.0", 1024, note="exit 1, see console.log"), 200.0, 20.0
    )
    assert "exit 1, see console.log" in row
    stats = row.split("|", 1)[1]
    assert not re.search(r"\d", stats.replace("exit 1", ""))
    assert stats.split()[:2] == ["-", "-"]


def test_aiperf_is_asked_for_exactly_our_workload():
    work = Workload(
        concurrency=256, requests=768, warmup=256, input_tokens=32, output_tokens=16, ramp_up_s=0.2,
        ttft_ms=200.0, itl_ms=20.0,
    )  # fmt: skip
    argv = peer_compare.peer_command(
        Path("/v/bin/aiperf"), "http://127.0.0.1:8000", work, Path("/tok"), Path("/a")
    )
    opts = dict(itertools.pairwise(argv))  # each option with the word after it
    assert argv[:2] == ["/v/bin/aiperf", "profile"]
    assert opts["--concurrency"] == "256" and opts["--request-count"] == "768"
    assert opts["--warmup-request-count"] == "256"
    assert (opts["--isl"], opts["--isl-stddev"], opts["--osl"], opts["--osl-stddev"]) == (
        "32",
        "0",
        "16",
        "0",
    )
    assert opts["--extra-inputs"] == "ignore_eos:true"  # every stream exactly 16 tokens, as ours asks
    assert opts["--endpoint-type"] == "completions" and opts["--concurrency-ramp-duration"] == "0.2"
    assert {"--streaming", "--use-server-token-count"} <= set(argv)
    assert opts["--tokenizer"] == "/tok"  # local: the hub is never asked
    assert "--workers-max" not in argv
    argv = peer_compare.peer_command(Path("/v/bin/aiperf"), "u", work, Path("/t"), Path("/a"), workers=4)
    assert argv[argv.index("--workers-max") + 1] == "4"


def test_the_peer_is_pinned_and_pulls_no_gpu_wheels():
    pins = {}
    for line in peer_compare.REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"unpinned: {line}"
            pins[name.lower()] = version
    assert peer_compare.pinned_version() == pins["aiperf"]
    gpu = [n for n in pins if n in ("torch", "triton") or n.startswith(("nvidia-cu", "cuda-"))]
    assert gpu == []
