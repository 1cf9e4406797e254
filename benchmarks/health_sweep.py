"""Health sweep at scale: 2,000 virtual clusters x 10 nodes on one devcluster.

Prints, measured in the same run:
  * the raw rate of ``GET /version`` this machine achieves against the devcluster (thread pool, kept-alive
    connections, same concurrency as the sweep) and the time 2,000 such requests take;
  * the full sweep time (``clusters.services.sweep``: decrypt each kubeconfig, connect-time host check, a new
    TLS connection per cluster, ``GET /version``, bulk status update);
  * the sweep time with one cluster black-holed (it must cost no more than its own timeout).

Clusters are stored the way the registration workflow stores them (validated, normalized, encrypted), in bulk,
because 2,000 registration runs would measure the registration workflow rather than the sweep.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import httpx

    from clusters import services
    from clusters.models import Cluster

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

            # Baseline: raw GET /version with kept-alive connections, same concurrency.
            import yaml

            configs = [yaml.safe_load(p.read_text()) for p in paths]
            ca = Path(tmp) / "ca.pem"
            import base64

            ca.write_bytes(
                base64.b64decode(configs[0]["clusters"][0]["cluster"]["certificate-authority-data"])
            )
            targets = [
                (c["clusters"][0]["cluster"]["server"], c["users"][0]["user"]["token"]) for c in configs
            ]
            client = httpx.Client(
                verify=str(ca), limits=httpx.Limits(max_connections=args.concurrency), timeout=args.timeout
            )

            def raw(target):
                server, token = target
                return client.get(
                    f"{server}/version", headers={"Authorization": f"Bearer {token}"}
                ).status_code

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(raw, targets[:200]))  # warm up connections
                t0 = time.monotonic()
                codes = list(pool.map(raw, targets))
                raw_seconds = time.monotonic() - t0
            client.close()
            assert all(code == 200 for code in codes), set(codes)
            rate = len(targets) / raw_seconds
            print(f"raw GET /version: {rate:,.0f} req/s ({len(targets)} requests in {raw_seconds:.2f}s)")

            report = services.sweep(timeout=args.timeout, workers=args.concurrency)
            assert not report.transitions, report.transitions[:5]
            print(
                f"sweep: {report.checked} clusters in {report.seconds:.2f}s "
                f"({report.checked / report.seconds:,.0f} clusters/s; {report.seconds / raw_seconds:.1f}x the raw "
                f"/version time; target <= 30 s)"
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
