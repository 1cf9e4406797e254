"""How many concurrent streams can the load generator measure before its own overhead shows?

Starts the devcluster inference simulator in its own process with a known truth (default TTFT 200 ms, ITL
20 ms), runs the load generator at increasing concurrency, and prints for each level the truth, the measured
mean TTFT and ITL, the error, and the client's CPU use; then the highest concurrency at which the measured mean
TTFT stays within 5 % of the truth.

    .venv/bin/python benchmarks/benchmark_client.py [--concurrency 1,64,256,512,1024] [--processes 1,2]
        [--waves 3] [--server-loop uvloop|asyncio] [--client-loop uvloop|asyncio] [--endpoint completions|chat]

Each concurrency runs once per entry of `--processes`: the load generator's streams spread over that many load
processes (`LoadSettings.processes`), so the table shows one event loop's limit beside the spread one's.  The
client's own health comes from the run itself: p99 send lag (scheduled to actual send), p99 event-loop delay,
CPU of each load process (% of a core, summed), and "valid" (no sign the client was the bottleneck;
`benchstats.client_health`).

Whatever the simulator itself lags under load is counted against the client here, so by default the simulator
runs on uvloop (its CLI default) to keep the server's share small; `--server-loop asyncio` shows the
simulator as devcluster runs it.  Each level sends `waves` x concurrency requests after one warm-up wave that
opens the pooled connections.  On a shared 2-core machine other work moves the numbers; run it when idle.

"server TTFT" is the mean TTFT the simulator itself delivered (its `vllm:time_to_first_token_seconds` histogram,
from when its handler took the request to the first token written, over the level's warm-up and measured
requests; one simulator process only): above the truth, the simulator fell behind; the measured TTFT minus
"headers ms" minus it is what the client added on the receiving side.

"headers ms" is the mean time to the response headers, which the simulator sends as soon as its handler
starts: when all streams start together (rate = inf), that is mostly the simulator working through the burst
of requests (and the client sending them), so TTFT error minus it approximates the client's receive-side
overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments import benchstats  # noqa: E402
from deployments.loadgen import LoadSettings, run_benchmark  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(
    port: int, ttft_ms: float, itl_ms: float, loop: str, workers: int = 1
) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "devcluster.sim.inference",
        "--loop",
        loop,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        "bench",
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--max-num-seqs",
        "4096",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the simulator did not start")


def server_ttft(port: int) -> tuple[float, int]:
    """(sum of seconds, count) of the simulator's own TTFT histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, int(count)


def measure(url: str, concurrency: int, processes: int, args: argparse.Namespace) -> dict:
    settings = LoadSettings(
        base_url=url,
        model="bench",
        endpoint=args.endpoint,
        num_requests=concurrency * args.waves,
        concurrency=concurrency,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        warmup_requests=concurrency,
        timeout_s=120,
        idle_timeout_s=30,
        ramp_up_s=args.ttft_ms / 1000.0 if args.ramp_up_s is None else args.ramp_up_s,
        processes=min(processes, concurrency),
    )
    port = int(url.rsplit(":", 1)[1])
    before = server_ttft(port) if args.server_workers == 1 else None
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.client_loop == "uvloop":
        import uvloop

        result = uvloop.run(run_benchmark(settings))
    else:
        result = asyncio.run(run_benchmark(settings))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    summary = benchstats.summarize(result)
    summary["server_ttft_ms"] = float("nan")
    if before is not None:
        after = server_ttft(port)
        if after[1] > before[1]:
            summary["server_ttft_ms"] = (after[0] - before[0]) / (after[1] - before[1]) * 1000.0
    ok = [r for r in result.requests if r.success and r.headers is not None and r.ttft is not None]
    summary["headers_ms"] = sum(r.headers for r in ok) / len(ok) * 1000 if ok else float("nan")
    # One load process: this process's CPU over the whole call; several: what each load process used while
    # measuring, summed (this process only waits for them then).
    summary["client_cpu_pct"] = (
        100.0 * cpu / wall if settings.processes == 1 and wall > 0 else sum(summary["client"]["cpu_percent"])
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,64,256,512,1024")
    p.add_argument(
        "--processes",
        default=f"1,{max(2, os.cpu_count() or 1)}",
        help="load processes to try at each concurrency (default: 1 and one per CPU)",
    )
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--server-loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument(
        "--server-workers", type=int, default=1, help="simulator processes sharing the port (SO_REUSEPORT)"
    )
    p.add_argument("--client-loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument(
        "--ramp-up-s",
        type=float,
        default=None,
        help="spread each level's first wave over this long (default: one TTFT; 0 = one burst)",
    )
    args = p.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    spreads = [int(x) for x in args.processes.split(",") if x.strip()]

    port = free_port()
    proc = start_simulator(port, args.ttft_ms, args.itl_ms, args.server_loop, args.server_workers)
    url = f"http://127.0.0.1:{port}"
    print(
        f"simulator truth: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms; {args.output_tokens} output tokens; "
        f"server loop {args.server_loop}, client loop {args.client_loop}; ramp-up "
        f"{args.ttft_ms / 1000.0 if args.ramp_up_s is None else args.ramp_up_s:g} s; "
        f"{args.server_workers} simulator process(es); {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'concurrency':>11} {'processes':>9} {'truth ms':>9} {'TTFT ms':>9} {'error %':>8} {'server TTFT':>11} "
        f"{'p99 TTFT':>9} "
        f"{'headers ms':>10} {'ITL ms':>8} {'ITL err %':>9} {'failed':>6} {'client CPU %':>12} "
        f"{'lag p99':>8} {'loop p99':>8} {'valid':>5}  within"
    )
    print(header)
    print("-" * len(header))
    best: dict[int, int] = {}
    nan = float("nan")
    try:
        for c in levels:
            for n in spreads:
                if n > c:
                    continue
                s = measure(url, c, n, args)
                ttft, itl = s["mean_ttft_ms"], s["mean_itl_ms"]
                err = (ttft - args.ttft_ms) / args.ttft_ms * 100 if ttft is not None else nan
                itl_err = (itl - args.itl_ms) / args.itl_ms * 100 if itl is not None else nan
                ok = ttft is not None and s["failed_requests"] == 0 and abs(err) <= args.tolerance * 100
                if ok:
                    best[n] = c
                health = s["client"]
                print(
                    f"{c:>11} {n:>9} {args.ttft_ms:>9.1f} {ttft or nan:>9.1f} {err:>8.2f} "
                    f"{s['server_ttft_ms']:>11.1f} "
                    f"{s['p99_ttft_ms'] or nan:>9.1f} {s['headers_ms']:>10.1f} "
                    f"{itl or nan:>8.2f} {itl_err:>9.2f} "
                    f"{s['failed_requests']:>6} {s['client_cpu_pct']:>12.0f} "
                    f"{health['send_lag_ms']['p99'] or nan:>8.1f} {health['loop_delay_ms']['p99'] or nan:>8.1f} "
                    f"{'yes' if health['valid'] else 'NO':>5}  {'yes' if ok else 'NO'}",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    tol = args.tolerance * 100
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f}")
    for n in spreads:
        if n in best:
            print(
                f"{n} load process(es): highest concurrency with mean TTFT within {tol:g} % of the truth: {best[n]}"
            )
        else:
            print(f"{n} load process(es): no concurrency kept the mean TTFT within {tol:g} % of the truth")


if __name__ == "__main__":
    main()
