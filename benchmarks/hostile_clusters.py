"""Hostile clusters: how long each hostile API server holds a caller, and how much memory it costs.

For each behaviour of ``tests.hostile.server.HostileServer`` (drip a byte every 2 s in the body or in the headers, a
400 MB flood with and without a declared length, a gzip bomb, an endless stream, a wrong CA, a redirect to the
metadata address, a stalled and a dripped TLS handshake, and a healthy server for reference), one ``GET /version``
is made exactly as the health sweep makes it (``--path sweep``, the default: ``core.probe`` on an event loop,
deadline ``CLUSTER_HEALTH_TIMEOUT``, response cap ``GATEWAY_MAX_RESPONSE_BYTES``) or through the cluster gateway as
live checks and workflow steps do (``--path gateway``: ``timeout`` and ``budget`` = the deadline). The call runs in
a fresh child process so that its peak RSS growth (``resource.getrusage``) and Python allocation peak
(``tracemalloc``) are its own; the hostile server runs in this process.

Prints one row per case: the bound it must respect, the error it ended with, the time it took and the memory
it cost.

Usage: python benchmarks/hostile_clusters.py [--timeout 5] [--cap-mib 64] [--interval 2] [--path sweep|gateway]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = (
    "healthy",
    "drip",
    "drip_headers",
    "endless",
    "flood",
    "flood_declared",
    "gzip_bomb",
    "wrong_ca",
    "redirect",
    "stall_handshake",
    "slow_handshake",
)


class _Answered(Exception):
    pass


def _child(kubeconfig_path: str, timeout: float, cap: int, trace: bool, path: str) -> None:
    """One call through the sweep's probe or the gateway; prints a JSON line with what happened."""
    import asyncio

    from django.conf import settings

    from core import probe
    from core.gateway import ClusterGateway, GatewayError

    settings.configure(BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS=True)
    kubeconfig = json.loads(Path(kubeconfig_path).read_text())
    # Warm up what a long-lived worker has already loaded, so the figures are the call's own.
    import h11  # noqa: F401
    import httpcore  # noqa: F401
    import httpx  # noqa: F401

    if path == "sweep":
        target = probe.target_from_kubeconfig(kubeconfig)
        loop = asyncio.new_event_loop()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    started = time.monotonic()
    outcome = "answered"
    try:
        if path == "sweep":
            ok, why = loop.run_until_complete(probe.probe(target, timeout, probe.ConnectionPool(0), cap=cap))
            if not ok:
                raise GatewayError(why)
            raise _Answered
        with ClusterGateway(
            kubeconfig,
            timeout=timeout,
            budget=timeout,
            allow_loopback=True,
            max_response_bytes=cap,
            reuse=False,
        ) as gw:
            gw.version()
    except _Answered:
        pass
    except GatewayError as exc:
        outcome = str(exc) if path == "sweep" else f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "seconds": seconds, "rss_kib": after - before, "peak": peak}))


def _measure(case: str, interval: float, timeout: float, cap: int, trace: bool, path: str) -> dict:
    from tests.hostile.server import HostileServer

    via = path
    with HostileServer(case, interval=interval) as server, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kubeconfig.json")
        path.write_text(json.dumps(server.kubeconfig()))
        args = [sys.executable, __file__, "--child", str(path), "--timeout", str(timeout), "--cap", str(cap),
                "--path", via]  # fmt: skip
        if trace:
            args.append("--trace")
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 120, check=False
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{case}: the child printed nothing:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="per-call deadline (CLUSTER_HEALTH_TIMEOUT)"
    )
    parser.add_argument("--cap-mib", type=int, default=64, help="response cap (GATEWAY_MAX_RESPONSE_BYTES)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between dripped bytes")
    parser.add_argument(
        "--path",
        choices=("sweep", "gateway"),
        default="sweep",
        help="the sweep's probe or the cluster gateway",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.timeout, args.cap, args.trace, args.path)
        return

    cap = args.cap_mib * 1024 * 1024
    print(
        f"{args.path} path: deadline {args.timeout:g} s per call, cap {args.cap_mib} MiB, "
        f"drip interval {args.interval:g} s"
    )
    print(f"{'case':16} {'bound':>14} {'time s':>7} {'RSS +MiB':>9} {'py peak MiB':>11}  outcome")
    for case in CASES:
        bound = (
            f"{args.cap_mib} MiB"
            if case in ("flood", "flood_declared", "gzip_bomb")
            else f"{args.timeout:g} s"
        )
        rss = _measure(case, args.interval, args.timeout, cap, trace=False, path=args.path)
        traced = _measure(case, args.interval, args.timeout, cap, trace=True, path=args.path)
        outcome = rss["outcome"]
        outcome = outcome if len(outcome) <= 110 else outcome[:107] + "..."
        print(
            f"{case:16} {bound:>14} {rss['seconds']:7.2f} {rss['rss_kib'] / 1024:9.1f} "
            f"{traced['peak'] / 2**20:11.1f}  {outcome}"
        )


if __name__ == "__main__":
    main()
