"""``GET /metrics`` at fleet scale: scrape time at 2,000 clusters x 10 nodes, beside baselines in the same run.

Seeds (bulk inserts into its own PostgreSQL database): ``--clusters`` clusters of ``--nodes`` nodes each (GPU
nodes with a mix of models), a deployment per cluster, ``--runs`` finished runs of 10 steps each. Then scrapes
``/metrics`` through the full Django stack (the WSGI handler, as a web worker serves it) ``--scrapes`` times and
prints the median, p95 and max time and the answer's size, beside two baselines taken the same way in the same run:
``GET /health`` (the cheapest request the stack serves) and ``GET /health/db`` (one query). It also prints the
number of queries one scrape makes, measured, so "independent of fleet size" can be checked by running it with
other ``--clusters``.

Usage: python benchmarks/metrics_scale.py [--clusters 2000] [--nodes 10] [--runs 10000] [--scrapes 20]
(DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/budcluster_bench_metrics.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_metrics")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
os.environ.setdefault("LOG_LEVEL", "WARNING")
TOKEN = "bench-metrics-token-0123456789"
os.environ["METRICS_TOKEN"] = TOKEN
os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1"

MODELS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S", "AMD-Instinct-MI300X", "HL-225"]


def seed(clusters: int, nodes: int, runs: int) -> None:
    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone

    from clusters.models import Cluster
    from core.models import Run, RunStep
    from deployments.models import Deployment
    from hardware.models import Node

    if Cluster.objects.count() == clusters and Node.objects.count() == clusters * nodes:
        return
    Run.objects.all().delete()
    Deployment.objects.all().delete()
    Cluster.objects.all().delete()
    statuses = ["available"] * 18 + ["not_available", "error"]
    made = Cluster.objects.bulk_create(
        [Cluster(name=f"c{i:05d}", status=statuses[i % 20], kubeconfig="x") for i in range(clusters)],
        batch_size=1000,
    )
    Node.objects.bulk_create(
        [
            Node(
                cluster=c,
                name=f"n{j}",
                ready=j != 0,
                accelerator_type="cuda",
                accelerator_model=MODELS[j % 5],
                accelerator_count=8,
                free_accelerators=j % 9,
            )
            for c in made
            for j in range(nodes)
        ],
        batch_size=5000,
    )
    deployments = Deployment.objects.bulk_create(
        [Deployment(cluster=c, name=f"d{c.pk}", namespace=f"bud-d{c.pk}", status="running") for c in made],
        batch_size=1000,
    )
    now = timezone.now()
    ct = ContentType.objects.get_for_model(Deployment)
    kinds = ["deployment.deploy", "cluster.register", "deployment.benchmark", "hardware.collect"]
    run_rows = [
        Run(
            id=uuid.uuid4(),
            kind=kinds[i % 4],
            title="bench",
            subject_type=ct,
            subject_id=str(deployments[i % len(deployments)].pk),
            status=["succeeded", "failed", "cancelled", "running"][i % 4],
            started_at=now - timedelta(minutes=10),
            finished_at=now if i % 4 != 3 else None,
        )
        for i in range(runs)
    ]
    Run.objects.bulk_create(run_rows, batch_size=2000)
    RunStep.objects.bulk_create(
        [
            RunStep(
                run=r,
                order=k,
                name=f"s{k}",
                title=f"step {k}",
                status="succeeded",
                started_at=now - timedelta(seconds=60 - k),
                finished_at=now,
            )
            for r in run_rows
            for k in range(10)
        ],
        batch_size=5000,
    )


def timed(client, path: str, scrapes: int, **headers) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(scrapes):
        started = time.perf_counter()
        answer = client.get(path, **headers)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (path, answer.status_code)
        size = len(answer.content)
    return times, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    from django.db import connection
    from django.test import Client

    started = time.perf_counter()
    seed(args.clusters, args.nodes, args.runs)
    print(
        f"fleet: {args.clusters} clusters x {args.nodes} nodes, {args.clusters} deployments, {args.runs} runs "
        f"x 10 steps (seeded in {time.perf_counter() - started:.1f} s)"
    )
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    timed(client, "/metrics", 2, **auth)  # warm: imports, connection, first plans
    # Counted by a wrapper around every statement: the request's start resets Django's own query log.
    queries: list[str] = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        client.get("/metrics", **auth)
    rows = []
    for label, path, headers in (
        ("GET /health (baseline)", "/health", {}),
        ("GET /health/db (baseline)", "/health/db", {}),
        ("GET /metrics", "/metrics", auth),
        ("GET /metrics, gzip", "/metrics", {**auth, "HTTP_ACCEPT_ENCODING": "gzip"}),
    ):
        times, size = timed(client, path, args.scrapes, **headers)
        rows.append(
            (label, statistics.median(times), sorted(times)[int(0.95 * (len(times) - 1))], max(times), size)
        )
    print(f"{'request':<28}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}{'bytes':>10}")
    for label, med, p95, worst, size in rows:
        print(f"{label:<28}{med * 1000:>11.1f}{p95 * 1000:>9.1f}{worst * 1000:>9.1f}{size:>10}")
    print(f"/metrics: {len(queries)} database queries per scrape; "
          f"{rows[2][1] / rows[1][1]:.1f}x the one-query baseline")  # fmt: skip


if __name__ == "__main__":
    main()
