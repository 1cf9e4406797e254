"""Inventory ingest: parse and upsert 20,000 nodes into PostgreSQL; query count of node list pages.

Prints the time of ``hardware.services.store_inventory`` for one cluster with N nodes (parse + one bulk upsert +
one delete), first insert and re-upsert (the periodic refresh), and the number of SQL queries that
``GET /clusters/{id}/nodes`` makes at several page sizes (it must not grow with the page size). Target: ≤ 5 s.

Usage: DATABASE_URL=postgresql://postgres@127.0.0.1:5432/budcluster_bench python benchmarks/inventory_ingest.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    args = parser.parse_args()

    from benchmarks.common import setup_django
    from benchmarks.inventory_parse import make_nodes

    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from clusters.models import Cluster
    from hardware.models import Node
    from hardware.services import store_inventory

    nodes = make_nodes(args.nodes)
    for i, node in enumerate(nodes):  # unique names across the generated set
        node["metadata"]["name"] = f"node-{i:05d}"
    cluster, _ = Cluster.objects.get_or_create(
        name="bench-ingest", defaults={"server_url": "https://10.9.9.9:6443"}
    )
    Node.objects.filter(cluster=cluster).delete()

    t0 = time.perf_counter()
    result = store_inventory(cluster, nodes, [])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    store_inventory(cluster, nodes, [])
    second = time.perf_counter() - t0
    print(
        f"store_inventory, {result['nodes']:,} nodes: first insert {first:.2f}s, "
        f"re-upsert {second:.2f}s (target <= 5 s)"
    )

    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_superuser": True, "is_staff": True}
    )
    api = APIClient()
    api.force_authenticate(user)
    print("GET /clusters/{id}/nodes queries by page size:", end="")
    for limit in (10, 100, 1000):
        with CaptureQueriesContext(connection) as ctx:
            response = api.get(f"/clusters/{cluster.pk}/nodes?limit={limit}", HTTP_HOST="localhost")
        assert response.status_code == 200, response.status_code
        print(f"  {limit}: {len(ctx.captured_queries)}", end="")
    print()
    Node.objects.filter(cluster=cluster).delete()
    cluster.delete()


if __name__ == "__main__":
    main()
