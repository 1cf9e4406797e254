"""Scale benchmark of the devcluster API emulator: many virtual clusters in one process.

Prints: objects created per second (store level while clusters are built, and over HTTPS), GET /version and
list-nodes latency (p50/p95/p99 over random clusters) and the process's resident memory.

    .venv/bin/python benchmarks/devcluster_scale.py                      # 2,000 clusters x 10 nodes
    .venv/bin/python benchmarks/devcluster_scale.py --clusters 200 --requests 500
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from devcluster.harness import DevCluster


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_nodes(n: int) -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"node-{i:02d}",
                "labels": {
                    "kubernetes.io/hostname": f"node-{i:02d}",
                    "node.kubernetes.io/instance-type": "bench.large",
                },
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"},
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{i + 1}"}],
            },
        }
        for i in range(n)
    ]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--nodes-per-cluster", type=int, default=10)
    ap.add_argument("--requests", type=int, default=2000, help="requests per latency measurement")
    ap.add_argument("--creates", type=int, default=2000, help="ConfigMaps created over HTTPS")
    ap.add_argument("--sim", action="store_true", help="attach the simulation (scheduler, kubelet, ...) too")
    args = ap.parse_args()

    base_rss = rss_mib()
    nodes = make_nodes(args.nodes_per_cluster)
    t0 = time.perf_counter()
    dc = DevCluster(nodes=nodes, clusters=args.clusters, use_sim=args.sim).start(timeout=1800)
    setup_s = time.perf_counter() - t0
    total_nodes = dc.call(lambda: sum(len(dc.server.clusters[n].iter_objects("nodes")) for n in dc.names))
    per_cluster_objects = dc.call(lambda: sum(len(t) for t in dc.cluster()._objects.values()))
    store_objects = per_cluster_objects * args.clusters
    print(f"clusters: {args.clusters}   nodes: {total_nodes}   simulation: {'on' if args.sim else 'off'}")
    print(
        f"setup: {setup_s:.2f} s   store objects created: {store_objects} ({store_objects / setup_s:,.0f}/s)"
    )
    print(
        f"memory (RSS): {rss_mib():.0f} MiB total, {rss_mib() - base_rss:.0f} MiB for the clusters "
        f"({(rss_mib() - base_rss) * 1024 / args.clusters:.1f} KiB per cluster)"
    )

    ctx = ssl.create_default_context(cadata=dc.ca_pem.decode())
    rnd = random.Random(42)
    try:
        with httpx.Client(verify=ctx, timeout=30) as http:

            def call(method: str, name: str, path: str, **kw: object) -> httpx.Response:
                r = http.request(
                    method,
                    dc.cluster_url(name) + path,
                    headers={"Authorization": f"Bearer {dc.token(name)}"},
                    **kw,
                )
                r.raise_for_status()
                return r

            for label, path in (("GET /version", "/version"), ("list nodes", "/api/v1/nodes")):
                lat = []
                for _ in range(args.requests):
                    name = rnd.choice(dc.names)
                    t = time.perf_counter()
                    r = call("GET", name, path)
                    lat.append((time.perf_counter() - t) * 1000)
                    if path.endswith("nodes"):
                        assert len(r.json()["items"]) == args.nodes_per_cluster
                print(
                    f"{label:13s} p50 {statistics.median(lat):6.2f} ms   p95 {pct(lat, 95):6.2f} ms   "
                    f"p99 {pct(lat, 99):6.2f} ms   ({len(lat) / (sum(lat) / 1000):,.0f} req/s sequential)"
                )

            t = time.perf_counter()
            for i in range(args.creates):
                name = dc.names[i % len(dc.names)]
                call(
                    "POST",
                    name,
                    "/api/v1/namespaces/default/configmaps",
                    json={"metadata": {"name": f"bench-{i}"}, "data": {"i": str(i)}},
                )
            dt = time.perf_counter() - t
            print(
                f"HTTPS creates: {args.creates} ConfigMaps in {dt:.2f} s ({args.creates / dt:,.0f}/s sequential)"
            )
    finally:
        dc.stop()
    print(f"memory (RSS) at end: {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
