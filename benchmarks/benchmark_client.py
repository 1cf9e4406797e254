"""How many concurrent streams can the load generator measure before its own overhead shows?

Starts the devcluster inference simulator in its own process with a known truth (default TTFT 200 ms, ITL
20 ms), runs the load generator at increasing concurrency, and prints for each level the truth, the measured
mean TTFT and ITL, the error, and the client's CPU use; then the highest concurrency at which the measured mean
TTFT stays within 5 % of the truth.

    .venv/bin/python benchmarks/benchmark_client.py [--concurrency 1,32,64,128,256,512] [--waves 3]
        [--server-loop uvloop|asyncio] [--client-loop uvloop|asyncio] [--endpoint completions|chat]

Whatever the simulator itself lags under load is counted against the client here, so by default the simulator
runs on uvloop (its CLI default) to keep the server's share small; `--server-loop asyncio` shows the
simulator as devcluster runs it.  Each level sends `waves` x concurrency requests after one warm-up wave that
opens the pooled connections.  On a shared 2-core machine other work moves the numbers; run it when idle.

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


def start_simulator(port: int, ttft_ms: float, itl_ms: float, loop: str) -> subprocess.Popen:
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


def measure(url: str, concurrency: int, args: argparse.Namespace) -> dict:
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
    )
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
    ok = [r for r in result.requests if r.success and r.headers is not None and r.ttft is not None]
    summary["headers_ms"] = sum(r.headers for r in ok) / len(ok) * 1000 if ok else float("nan")
    summary["client_cpu_pct"] = 100.0 * cpu / wall if wall > 0 else 0.0
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,32,64,128,256,512")
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--server-loop", choices=["uvloop", "asyncio"], default="uvloop")
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

    port = free_port()
    proc = start_simulator(port, args.ttft_ms, args.itl_ms, args.server_loop)
    url = f"http://127.0.0.1:{port}"
    print(
        f"simulator truth: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms; {args.output_tokens} output tokens; "
        f"server loop {args.server_loop}, client loop {args.client_loop}; ramp-up "
        f"{args.ttft_ms / 1000.0 if args.ramp_up_s is None else args.ramp_up_s:g} s; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'concurrency':>11} {'truth ms':>9} {'TTFT ms':>9} {'error %':>8} {'p99 TTFT':>9} {'headers ms':>10} "
        f"{'ITL ms':>8} "
        f"{'ITL err %':>9} {'failed':>6} {'client CPU %':>12}  within"
    )
    print(header)
    print("-" * len(header))
    best = None
    try:
        for c in levels:
            s = measure(url, c, args)
            ttft, itl = s["mean_ttft_ms"], s["mean_itl_ms"]
            err = (ttft - args.ttft_ms) / args.ttft_ms * 100 if ttft is not None else float("nan")
            itl_err = (itl - args.itl_ms) / args.itl_ms * 100 if itl is not None else float("nan")
            ok = ttft is not None and s["failed_requests"] == 0 and abs(err) <= args.tolerance * 100
            if ok:
                best = c
            print(
                f"{c:>11} {args.ttft_ms:>9.1f} {ttft or float('nan'):>9.1f} {err:>8.2f} "
                f"{s['p99_ttft_ms'] or float('nan'):>9.1f} {s['headers_ms']:>10.1f} "
                f"{itl or float('nan'):>8.2f} {itl_err:>9.2f} "
                f"{s['failed_requests']:>6} {s['client_cpu_pct']:>12.0f}  {'yes' if ok else 'NO'}",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    tol = args.tolerance * 100
    if best is None:
        print(f"\nno concurrency kept the mean TTFT within {tol:g} % of the truth")
    else:
        print(f"\nhighest concurrency with mean TTFT within {tol:g} % of the truth: {best}")


if __name__ == "__main__":
    main()
