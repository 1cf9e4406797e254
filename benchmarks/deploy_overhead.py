"""Deploy orchestration overhead: N concurrent deploys of an 8B model on one devcluster, on real Celery workers.

Every deploy runs the whole ``deployment.deploy`` workflow (verify → place with an inventory read → namespace →
secrets → transfer chart → wait transfer → runtime chart → wait ready → verify endpoint → running). The
cluster's own waits are simulated (the weights copy lasts ``--job-duration`` seconds, pods start and get ready
after ``--pod-delay`` seconds each, the inference simulator answers at H100 speed).

Measured in one run, after a warm-up deploy per worker process: first one deploy alone (the baseline: its
wall time minus its waiting steps is what BudCluster adds to a single deploy), then N deploys submitted at
once. With N runs sharing a few worker processes, a run's own wall time mostly measures queueing, so the
overhead per deploy is amortized over the batch: (time until all N run - time for the one alone) / N, i.e. how
much each extra concurrent deploy delays the batch. Worker and devcluster CPU per deploy are printed beside it.

Usage: python benchmarks/deploy_overhead.py [--deploys 50] [--workers 4] [--job-duration 2] [--pod-delay 0.5]
(PostgreSQL database ``budcluster_bench_deploy`` and Redis db 13 by default; DATABASE_URL / CELERY_BROKER_URL
override). Target: errors 0, orchestration overhead ≤ 300 ms per deploy (amortized), worker CPU ≤ 300 ms per
deploy.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import group_cpu_seconds, stop_group  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_deploy")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
os.environ["BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"] = "1"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.2")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.2")

WAIT_STEPS = ("wait_transfer", "wait_ready", "verify_endpoint")
NODE_TEMPLATE = ROOT / "tests" / "fixtures" / "nodes" / "h100-xe9680.yaml"


def _nodes_file(workdir: Path, gpus_needed: int) -> Path:
    """Enough 8x H100 nodes (GPU feature discovery labels already on them) for one GPU per deploy."""
    template = yaml.safe_load(NODE_TEMPLATE.read_text())
    nodes = []
    for i in range(max(1, -(-gpus_needed // 8))):
        node = copy.deepcopy(template)
        name = f"h100-{i:02d}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        nodes.append(node)
    path = workdir / "nodes.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}))
    return path


def _start_devcluster(
    workdir: Path, nodes: Path, job_duration: float, pod_delay: float
) -> tuple[subprocess.Popen, Path]:
    out = workdir / "kubeconfig.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devcluster", "serve", "--port", "0", "--nodes", str(nodes), "--kubeconfig", str(out),
         "--job-duration", str(job_duration), "--pod-start-delay", str(pod_delay), "--pod-ready-delay", str(pod_delay),
         "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"devcluster exited: {proc.stderr.read().decode()[-2000:]}")
        if out.exists() and out.stat().st_size:
            return proc, out
        time.sleep(0.1)
    raise SystemExit("devcluster did not start within 120 s")


def _start_worker(concurrency: int) -> subprocess.Popen:
    log = open(ROOT / "var" / "bench-deploy-worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "budcluster_site", "worker", "-l", "WARNING", "-c", str(concurrency),
         "-n", "bench-deploy@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # Measure deploys, not worker start-up: wait until every pool process answers a ping.
    from budcluster_site.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(timeout=1.0):
            break
    else:
        raise SystemExit("the benchmark worker did not start; see var/bench-deploy-worker.log")
    return proc


def _host_probe() -> float:
    """Seconds for a fixed pure-Python loop: CPU figures scale with it (this machine's speed varies with its
    host's load), so it is printed beside them."""
    started = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - started


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"mean {statistics.fmean(values):7.3f}  median {statistics.median(values):7.3f}  "
        f"p95 {p95:7.3f}  max {ordered[-1]:7.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploys", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="Celery worker concurrency")
    parser.add_argument("--job-duration", type=float, default=2.0, help="simulated weights copy, seconds")
    parser.add_argument(
        "--pod-delay", type=float, default=0.5, help="simulated pod start and ready delays, seconds"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import redis
    from django.db import connection

    from clusters import services as cluster_services
    from clusters.models import Cluster
    from core.choices import RunStatus
    from core.models import Run
    from deployments import services
    from hardware.services import refresh_inventory

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()

    with tempfile.TemporaryDirectory() as tmp:
        proc, kubeconfig = _start_devcluster(
            Path(tmp),
            _nodes_file(Path(tmp), args.deploys + 1 + args.workers),
            args.job_duration,
            args.pod_delay,
        )
        worker = _start_worker(args.workers)
        try:
            Run.objects.all().delete()
            Cluster.objects.all().delete()
            with (
                connection.cursor() as cursor
            ):  # start every measurement from tables without earlier runs' bloat
                cursor.execute("VACUUM ANALYZE")
            checked = cluster_services.validate(kubeconfig.read_bytes())
            cluster = Cluster.objects.create(
                name="bench",
                server_url=checked.server,
                kubeconfig=checked.normalized_yaml(),
                status="available",
            )
            with cluster_services.gateway_for(cluster) as gw:
                inventory = refresh_inventory(cluster, gw)
            print(f"devcluster: {inventory['nodes']} nodes, {inventory['free_accelerators']} free H100s; "
                  f"worker concurrency {args.workers}; simulated copy {args.job_duration:g}s, "
                  f"pod start/ready {args.pod_delay:g}s + {args.pod_delay:g}s")  # fmt: skip

            def batch(tag: str, count: int) -> dict:
                """Submit ``count`` deploys at once and wait for them; CPU and wall time of this batch only."""
                cpu_before = group_cpu_seconds(worker.pid), group_cpu_seconds(proc.pid)
                t0 = time.monotonic()
                runs = []
                for i in range(count):
                    config = {
                        "model": "llama-3.1-8b-instruct",
                        "context_len": 4096,
                        "concurrency": 8,
                        "device_type": "cuda",
                    }
                    _, run = services.start_deploy(cluster, name=f"{tag}-{i:03d}", config=config)
                    runs.append(run.pk)
                submit = time.monotonic() - t0
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    if not Run.objects.filter(pk__in=runs, status__in=RunStatus.active()).exists():
                        break
                    time.sleep(0.1)
                return {
                    "runs": runs,
                    "submit": submit,
                    "makespan": time.monotonic() - t0,
                    "worker_cpu": group_cpu_seconds(worker.pid) - cpu_before[0],
                    "cluster_cpu": group_cpu_seconds(proc.pid) - cpu_before[1],
                }

            # Warm every pool process (Helm engine, charts, connections) first, as a worker that has served
            # any deploy is; then the baseline in the same run: one deploy alone (no queueing).
            batch("warmup", args.workers)
            alone = batch("alone", 1)
            probe_before = _host_probe()
            many = batch("bench", args.deploys)
            probe = (probe_before + _host_probe()) / 2
        finally:
            stop_group(worker, timeout=20)
            stop_group(proc, timeout=20)

    def per_run(run_ids: list) -> tuple[list, list[float], list[float]]:
        done = list(Run.objects.filter(pk__in=run_ids).prefetch_related("steps"))
        walls, waits = [], []
        for run in done:
            if run.status == RunStatus.SUCCEEDED:
                walls.append((run.finished_at - run.created_at).total_seconds())
                waits.append(
                    sum(
                        (s.finished_at - s.started_at).total_seconds()
                        for s in run.steps.all()
                        if s.name in WAIT_STEPS
                    )
                )
        return [r for r in done if r.status != RunStatus.SUCCEEDED], walls, waits

    n = args.deploys
    errors_alone, (wall_1,), (waits_1,) = per_run(alone["runs"])
    errors, walls, waits = per_run(many["runs"])
    errors += errors_alone
    print(
        f"errors: {len(errors)}" + "".join(f"\n  {r.title}: {r.status}: {r.error[:200]}" for r in errors[:5])
    )
    print(f"one deploy alone: wall {wall_1:.3f}s, simulated waits {waits_1:.3f}s (transfer, pods ready, endpoint; "
          f"polled every {os.environ['DEPLOY_POLL_INTERVAL']}s) -> orchestration {1000 * (wall_1 - waits_1):.0f} ms; "
          f"worker CPU {1000 * alone['worker_cpu']:.0f} ms")  # fmt: skip
    print(f"{n} concurrent deploys: submitted in {many['submit']:.2f}s "
          f"({many['submit'] / n * 1000:.1f} ms each, API path without HTTP), all running after "
          f"{many['makespan']:.2f}s")  # fmt: skip
    if walls:
        print(f"  per run wall time, s  {_stats(walls)}")
        print(
            f"  of which in waits, s  {_stats(waits)}   (simulated work plus polls queued behind other runs)"
        )
    amortized = (many["makespan"] - wall_1) / n
    print(
        f"orchestration overhead per deploy: {1000 * amortized:.0f} ms amortized = (time for all {n} - time for "
        f"one alone) / {n}, on {args.workers} worker processes and {os.cpu_count()} cores   (target <= 300 ms)"
    )
    print(
        f"CPU per deploy: Celery workers {1000 * many['worker_cpu'] / n:.0f} ms (steps, polls, gateway, Helm "
        f"rendering, database client; target <= 300 ms), devcluster {1000 * many['cluster_cpu'] / n:.0f} ms "
        "(simulated API server, kubelet, scheduler)"
    )
    print(f"host speed probe: {probe:.3f}s CPU for 5M Python additions (before and after the batch; CPU figures "
          "scale with it)")  # fmt: skip


if __name__ == "__main__":
    main()
