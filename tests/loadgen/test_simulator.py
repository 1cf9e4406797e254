"""Calibration against the devcluster inference simulator (`python -m devcluster.sim.inference`).

The simulator's truth here: TTFT 200 ms and ITL 20 ms (CLI overrides), prompt tokens = words and
punctuation, exactly `max_tokens` output tokens, every 10th request failing with `--fail-rate 0.1`, and a
stream going silent with `--stall-after-tokens`.  256 concurrent streams share two cores with the simulator
and whatever else runs on the machine.  The simulator's own TTFT (handler start to first token, its /metrics
histogram) stays within 0.5 %; what drifts under CPU contention is the time the request waits before the
simulator's loop reads it (`RequestRecord.headers`): 1-5 ms on an idle machine, 16 ms with one busy loop
beside it, 100 ms with two.  So both processes run on uvloop, the 256-stream case measures up to three times
(a load spike from outside shifts one measurement), and when every measurement is off it fails only if the
machine was quiet: when other processes took more than `BUSY_CORES` of CPU during the measurement (from
/proc/stat, minus this process and the simulator) the test is skipped with the figures, because the
calibration cannot be judged there.  BUDCLUSTER_LOADGEN_CALIBRATE_256=0 skips it outright.
`benchmarks/benchmark_client.py` reports the figures for every concurrency.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deployments import benchstats
from deployments.loadgen import LoadSettings, run_benchmark_sync

TTFT_MS = 200.0
ITL_MS = 20.0
BUSY_CORES = 0.25  # CPU (in cores) other processes may use before a 256-stream miss counts as the machine's


def _ticks(pid: int | None = None) -> int:
    """CPU time in clock ticks: busy time of the whole machine (incl. steal), or of one process."""
    if pid is None:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return user + nice + system + irq + softirq + steal
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class OtherLoad:
    """Cores' worth of CPU used by processes other than this one and `pids` between start() and cores()."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.available = Path("/proc/stat").exists()

    def start(self) -> None:
        if self.available:
            self.t0 = time.monotonic()
            self.busy0 = _ticks()
            self.ours0 = sum(_ticks(p) for p in (os.getpid(), *self.pids))

    def cores(self) -> float:
        if not self.available:
            return 0.0
        ours = sum(_ticks(p) for p in (os.getpid(), *self.pids)) - self.ours0
        other = _ticks() - self.busy0 - ours
        return max(other, 0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - self.t0)


def run(url: str, **kw) -> dict:
    base = {
        "model": "sim-model",
        "endpoint": "completions",
        "num_requests": 8,
        "concurrency": 4,
        "input_tokens": 24,
        "output_tokens": 12,
        "timeout_s": 60.0,
        "idle_timeout_s": 10.0,
    }
    base.update(kw)
    return benchstats.summarize(run_benchmark_sync(LoadSettings(base_url=url + "/v1", **base)))


@pytest.mark.parametrize(
    ("endpoint", "concurrency", "requests"),
    [
        ("chat", 1, 6),
        ("completions", 32, 96),
        pytest.param(
            "completions",
            256,
            768,
            marks=pytest.mark.skipif(
                os.environ.get("BUDCLUSTER_LOADGEN_CALIBRATE_256") == "0",
                reason="BUDCLUSTER_LOADGEN_CALIBRATE_256=0: 256-stream timing skipped on a busy machine",
            ),
        ),
    ],
)
def test_measured_latency_matches_the_simulator(simulator, endpoint, concurrency, requests):
    url = simulator(ttft_ms=TTFT_MS, itl_ms=ITL_MS)
    # Streams start spread over one TTFT: a single burst of 256 requests measures the simulator's request
    # parsing queue (tens of ms on two cores), not the latency it was told to simulate.
    settings = {
        "endpoint": endpoint,
        "num_requests": requests,
        "concurrency": concurrency,
        "warmup_requests": concurrency,
        "ramp_up_s": TTFT_MS / 1000.0,
    }
    load = OtherLoad(simulator.pid(url))
    load.start()
    s = run(url, **settings)
    measured = [s["mean_ttft_ms"]]
    for _ in range(2 if concurrency >= 256 else 0):
        if abs(s["mean_ttft_ms"] - TTFT_MS) <= 0.05 * TTFT_MS:
            break
        s = run(url, **settings)  # again: a load spike from outside the test shifts a single measurement
        measured.append(s["mean_ttft_ms"])
    assert s["successful_requests"] == requests and s["errors"] == []
    busy = load.cores()
    if concurrency >= 256 and abs(s["mean_ttft_ms"] - TTFT_MS) > 0.05 * TTFT_MS and busy > BUSY_CORES:
        pytest.skip(
            f"machine busy: other processes used {busy:.2f} cores while 256 streams measured mean TTFT "
            f"{', '.join(f'{m:.1f}' for m in measured)} ms against {TTFT_MS:.0f} ms; not judged"
        )
    assert s["mean_ttft_ms"] == pytest.approx(TTFT_MS, rel=0.05)
    assert s["mean_itl_ms"] == pytest.approx(ITL_MS, rel=0.05)


@pytest.mark.parametrize(("endpoint", "prompt_overhead"), [("completions", 0), ("chat", 2)])
def test_token_counts_are_the_simulators(simulator, endpoint, prompt_overhead):
    url = simulator(ttft_ms=50, itl_ms=10)
    s = run(url, endpoint=endpoint, num_requests=5, input_tokens=37, output_tokens=11)
    # A synthetic prompt of N tokens is N words; the chat template adds "user" and ":".
    assert s["total_input_tokens"] == 5 * (37 + prompt_overhead)
    assert s["total_output_tokens"] == 5 * 11
    assert s["min_tpot_ms"] is not None


def test_ten_percent_failures_are_reported(simulator):
    url = simulator(ttft_ms=50, itl_ms=10, fail_rate=0.1)
    s = run(url, num_requests=50, concurrency=10, output_tokens=3)
    assert (s["successful_requests"], s["failed_requests"]) == (45, 5)
    assert s["errors"] == [
        {"message": "HTTP 500: Simulated engine failure (DEVCLUSTER_FAIL_RATE)", "count": 5}
    ]


def test_stalled_simulator_stream_is_a_timeout_error(simulator):
    url = simulator(ttft_ms=50, itl_ms=10, stall_after_tokens=2)
    s = run(url, endpoint="chat", num_requests=2, concurrency=2, idle_timeout_s=0.5)
    assert s["failed_requests"] == 2
    assert s["errors"] == [{"message": "timeout: no data for 0.5 s (stalled stream)", "count": 2}]


def test_embeddings_against_the_simulator(simulator):
    url = simulator(ttft_ms=50, itl_ms=10)
    s = run(url, endpoint="embeddings", num_requests=3, input_tokens=8)
    assert s["successful_requests"] == 3 and s["total_input_tokens"] == 24
    assert s["mean_e2e_ms"] >= 50
