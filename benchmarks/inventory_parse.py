"""Time the pure node-inventory parser on 20,000 realistic Node objects.

The nodes are built from the real-world fixtures in tests/fixtures/nodes (H100, A100 MIG, MI300X,
Gaudi2, Intel AMX and AMD EPYC CPU nodes, control-plane, NotReady, cordoned, cloud T4s) with
per-node names, addresses and jittered capacities, so every label family the parser reads is
exercised. Prints nodes/s for parse alone and parse + to_dict (what the command and the upsert use).

    .venv/bin/python benchmarks/inventory_parse.py [--nodes 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hardware.inventory import parse_nodes  # noqa: E402
from hardware.nodefiles import load_node_objects  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "nodes"


def make_nodes(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    templates = [load_node_objects(path)[0] for path in sorted(FIXTURES.glob("*.yaml"))]
    nodes = []
    for index in range(count):
        node = copy.deepcopy(templates[index % len(templates)])
        name = f"node-{index:05d}"
        node["metadata"]["name"] = name
        node["metadata"].setdefault("labels", {})["kubernetes.io/hostname"] = name
        status = node.setdefault("status", {})
        status["addresses"] = [
            {"type": "InternalIP", "address": f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"}
        ]
        memory_kib = rng.randrange(8, 2048) * 1024 * 1024
        status.setdefault("capacity", {})["memory"] = f"{memory_kib}Ki"
        status.setdefault("allocatable", {})["memory"] = f"{memory_kib - 102400}Ki"
        status["allocatable"]["cpu"] = f"{rng.randrange(2, 224) * 1000 - 80}m"
        nodes.append(node)
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    nodes = make_nodes(args.nodes)
    best_parse = best_total = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        inventories = parse_nodes(nodes)
        parsed = time.perf_counter()
        rows = [inv.to_dict() for inv in inventories]
        done = time.perf_counter()
        best_parse = min(best_parse, parsed - start)
        best_total = min(best_total, done - start)
    assert len(rows) == args.nodes
    gpus = sum(row["accelerator_count"] for row in rows)
    print(f"nodes: {args.nodes}  (accelerators counted: {gpus})")
    print(f"parse:            {best_parse:.3f} s  {args.nodes / best_parse:,.0f} nodes/s")
    print(f"parse + to_dict:  {best_total:.3f} s  {args.nodes / best_total:,.0f} nodes/s")


if __name__ == "__main__":
    main()
