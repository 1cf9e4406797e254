"""Health sweep at scale: N virtual clusters x 10 nodes on one devcluster (default 2,000; ``--clusters 10000``).

Prints, measured in the same run against the same endpoints and at the same concurrency:
  * baseline 1, fresh-TLS raw: ``GET /version`` of every cluster, each on a new TLS connection -- what a fleet of
    distinct API servers costs when nothing is kept;
  * baseline 2, kept-alive raw: the same requests over kept-alive connections -- the most this machine gets out of
    the devcluster;
    each baseline is the better of a thread pool (httpx / ``http.client``) and asyncio streams with a hand-written
    request, printed with the client CPU per request, and measured right before the sweeps compared with it;
  * the sweep (``clusters.services.sweep``: kubeconfig decryption or its cache, connect-time address guard and IP
    pin, TLS verified per kubeconfig, ``GET /version``, status update) with the connections it opened and its
    client CPU per cluster:
      - keep-alive off (``CLUSTER_HEALTH_KEEPALIVE=0``), first of a process (every kubeconfig decrypted), then with
        the kubeconfigs cached: a new TLS connection per cluster, against the fresh-TLS rate (target >= 60 %);
      - keep-alive on, the first sweep and the steady state (the next sweep, as the beat's each minute), against
        the kept-alive rate -- target: 10,000 clusters in <= 30 s. All virtual clusters share one API server
        address and TLS identity, so kept-alive connections are shared among them, as client-go shares them; a
        fleet of distinct servers keeps one per cluster, up to ``CLUSTER_HEALTH_KEEPALIVE``;
  * the sweep time with one cluster black-holed (it must cost no more than its own timeout).

Clusters are stored the way the registration workflow stores them (validated, normalized, encrypted), in bulk,
because 10,000 registration runs would measure the registration workflow rather than the sweep.

Usage: DATABASE_URL=postgresql://postgres@127.0.0.1:5432/budcluster_bench python benchmarks/health_sweep.py
       [--clusters 2000] [--concurrency 64] [--timeout 5]
The database is created and migrated if needed; its clusters table is emptied first.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench")
os.environ["BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"] = "1"
os.environ.setdefault("LOG_LEVEL", "WARNING")


def _start_devcluster(workdir: Path, clusters: int) -> tuple[subprocess.Popen, Path]:
    out = workdir / "kubeconfig.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devcluster", "serve", "--port", "0", "--nodes", "small-gpu",
         "--clusters", str(clusters), "--kubeconfig", str(out), "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    last = out.with_name("kubeconfig.d") / f"c{clusters:04d}.yaml"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"devcluster exited: {proc.stderr.read().decode()[-2000:]}")
        if last.exists() and out.with_name("kubeconfig.admin-token").exists():
            return proc, out
        time.sleep(0.2)
    raise SystemExit("devcluster did not start within 300 s")


def _raw_threads(targets: list[tuple[str, str]], ca: Path, concurrency: int, timeout: float, keep: bool):
    """Seconds for one ``GET /version`` per target on a thread pool: httpx with one pool of kept-alive
    connections, or ``http.client`` with a new TLS connection per request. After a warm-up."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    import httpx

    # Every connection kept (httpx keeps 20 by default: the other 44 would be new TLS connections each time).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.Client(verify=str(ca), limits=limits, timeout=timeout)
    context = ssl.create_default_context(cafile=str(ca))

    def kept_alive(target):
        server, token = target
        return client.get(f"{server}/version", headers={"Authorization": f"Bearer {token}"}).status_code

    def fresh(target):
        server, token = target
        url = urlsplit(server)
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=timeout)
        try:
            conn.request("GET", f"{url.path}/version", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    call = kept_alive if keep else fresh
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, targets[:200]))
        t0 = time.monotonic()
        codes = list(pool.map(call, targets))
        seconds = time.monotonic() - t0
    client.close()
    assert all(code == 200 for code in codes), set(codes)
    return seconds


def _raw_asyncio(targets: list[tuple[str, str]], ca: Path, concurrency: int, keep: bool) -> float:
    """The same on asyncio streams with the least client work there is (a hand-written request, the answer read by
    its Content-Length): ``concurrency`` lanes, each on one kept-alive connection or a new one per request."""
    import asyncio
    import ssl
    from urllib.parse import urlsplit

    context = ssl.create_default_context(cafile=str(ca))
    url = urlsplit(targets[0][0])

    async def get(reader, writer, target) -> int:
        path = urlsplit(target[0]).path
        writer.write(
            f"GET {path}/version HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {target[1]}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def run(batch) -> list[int]:
        pending = iter(batch)
        codes: list[int] = []

        async def lane() -> None:
            conn = None
            for target in pending:
                if conn is None:
                    conn = await asyncio.open_connection(url.hostname, url.port, ssl=context)
                codes.append(await get(*conn, target))
                if not keep:
                    conn[1].transport.abort()
                    conn = None
            if conn is not None:
                conn[1].transport.abort()

        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return codes

    async def measure() -> float:
        await run(targets[:200])
        t0 = time.monotonic()
        codes = await run(targets)
        seconds = time.monotonic() - t0
        assert set(codes) == {200}, set(codes)
        return seconds

    return asyncio.run(measure())


def _cpu_ms(before: float, n: int) -> str:
    """This process's CPU time since ``before`` per request, in ms: the client's own cost, which (unlike a rate)
    the other tenants of a shared machine do not move much."""
    return f"{(time.process_time() - before) * 1000 / n:.2f}"


def _baseline(label: str, targets, ca: Path, concurrency: int, timeout: float, keep: bool) -> float:
    """The better of the threaded and the asyncio raw client (requests/s), both printed with their CPU cost."""
    n = len(targets)
    cpu = time.process_time()
    threads = n / _raw_threads(targets, ca, concurrency, timeout, keep)
    threads_cpu = _cpu_ms(cpu, n + 200)  # the warm-up's 200 requests included
    cpu = time.process_time()
    coroutines = n / _raw_asyncio(targets, ca, concurrency, keep)
    coroutines_cpu = _cpu_ms(cpu, n + 200)
    print(
        f"baseline {label} raw GET /version: {max(threads, coroutines):,.0f} req/s "
        f"(threads {threads:,.0f} at {threads_cpu} ms client CPU each, asyncio {coroutines:,.0f} at "
        f"{coroutines_cpu} ms)"
    )
    return max(threads, coroutines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import httpx
    from django.conf import settings

    from clusters import services
    from clusters.models import Cluster
    from core import probe

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        proc, out = _start_devcluster(Path(tmp), args.clusters)
        print(f"devcluster: {args.clusters} clusters x 10 nodes up in {time.monotonic() - t0:.1f}s")
        try:
            paths = sorted(out.with_name("kubeconfig.d").glob("*.yaml"))
            Cluster.objects.all().delete()
            t0 = time.monotonic()
            rows = []
            for path in paths:
                checked = services.validate(path.read_bytes())
                rows.append(
                    Cluster(
                        name=f"bench-{path.stem}",
                        server_url=checked.server,
                        kubeconfig=checked.normalized_yaml(),
                        status="available",
                    )
                )
            Cluster.objects.bulk_create(rows, batch_size=500)
            print(f"stored {len(rows)} clusters (validated + encrypted) in {time.monotonic() - t0:.1f}s")

            import base64

            import yaml

            configs = [yaml.safe_load(p.read_text()) for p in paths]
            ca = Path(tmp) / "ca.pem"
            ca.write_bytes(
                base64.b64decode(configs[0]["clusters"][0]["cluster"]["certificate-authority-data"])
            )
            targets = [
                (c["clusters"][0]["cluster"]["server"], c["users"][0]["user"]["token"]) for c in configs
            ]
            n = len(targets)
            print(f"concurrency {args.concurrency}, per-cluster timeout {args.timeout:g}s, {n} clusters")

            def run_sweep(label: str, baseline: tuple[str, float], deadline: float | None = None) -> None:
                before = probe.pool_stats()["opened"]
                cpu = time.process_time()
                report = services.sweep(timeout=args.timeout, workers=args.concurrency, deadline=deadline)
                cpu = _cpu_ms(cpu, n)
                assert not report.transitions, report.transitions[:5]
                assert report.checked == n, report.checked
                opened = probe.pool_stats()["opened"] - before
                rate = n / report.seconds
                versus = f"; {rate / baseline[1]:.0%} of the {baseline[0]} raw rate"
                print(
                    f"sweep, {label}: {n} clusters in {report.seconds:.2f}s = {rate:,.0f} clusters/s "
                    f"({opened} connections opened, {cpu} ms client CPU per cluster{versus})"
                )

            # Each baseline is measured right before the sweep compared with it: the load on a shared machine
            # moves, and figures taken minutes apart would compare the load, not the clients.
            fresh_rate = _baseline("fresh-TLS", targets, ca, args.concurrency, args.timeout, keep=False)
            # The keep-alive-off sweeps' deadline is raised so that they measure a rate: on a busy machine 10,000
            # new TLS connections can take longer than CLUSTER_HEALTH_SWEEP_DEADLINE (the clusters left would be
            # reported not answering).
            keepalive = settings.CLUSTER_HEALTH_KEEPALIVE
            settings.CLUSTER_HEALTH_KEEPALIVE = 0
            probe.close_idle_connections()
            probe.targets.clear()
            run_sweep(
                "keep-alive off, first of a process (decrypts every kubeconfig)",
                ("fresh-TLS", fresh_rate),
                deadline=600.0,
            )
            fresh_rate = _baseline("fresh-TLS", targets, ca, args.concurrency, args.timeout, keep=False)
            run_sweep(
                "keep-alive off, kubeconfigs cached (a new TLS connection per cluster, as for distinct API servers "
                "past CLUSTER_HEALTH_KEEPALIVE)",
                ("fresh-TLS", fresh_rate),
                deadline=600.0,
            )
            settings.CLUSTER_HEALTH_KEEPALIVE = keepalive
            kept_rate = _baseline("kept-alive", targets, ca, args.concurrency, args.timeout, keep=True)
            run_sweep("keep-alive on, first sweep (connections opened)", ("kept-alive", kept_rate))
            run_sweep(
                "keep-alive on, steady state (the next sweep; target <= 30 s)", ("kept-alive", kept_rate)
            )

            admin_token = out.with_name("kubeconfig.admin-token").read_text().strip()
            victim = paths[0].stem
            base = targets[0][0].rsplit("/clusters/", 1)[0]
            httpx.post(
                f"{base}/_devcluster/clusters/{victim}/faults",
                json={"kind": "unreachable"},
                headers={"Authorization": f"Bearer {admin_token}"},
                verify=str(ca),
            ).raise_for_status()
            report = services.sweep(timeout=args.timeout, workers=args.concurrency)
            print(
                f"sweep with 1 black-holed cluster: {report.seconds:.2f}s (timeout {args.timeout:g}s); "
                f"transitions: {report.transitions}"
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            Cluster.objects.all().delete()


if __name__ == "__main__":
    main()
