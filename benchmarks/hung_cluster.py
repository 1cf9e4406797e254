"""One hung cluster must not slow everyone: a healthy deploy's time alone, and beside deploys waiting on a cluster
that stops answering.

Two virtual clusters of one devcluster (8x H100 nodes whose GPU labels are already on them, so no collectors are
needed): ``healthy`` and ``hung``. Measured, after a warm-up deploy:

1. one deploy on ``healthy`` alone (the baseline);
2. ``--hung`` deploys started on ``hung`` and let reach ``wait_ready``; then ``hung`` stops answering (devcluster's
   ``unreachable`` fault: requests are held without an answer) and one deploy on ``healthy`` is timed;
   the hung deploys are then cancelled and the fault cleared.

Scenario 2 runs on two worker layouts:

* ``split`` (what ``scripts/run.sh`` and ``compose.yaml`` run): a main worker on the default queue and a poll
  worker on ``WORKFLOW_POLL_QUEUE``, where the checks of waiting steps go (``core.check_step``); each check gets
  ``WORKFLOW_POLL_CHECK_DEADLINE`` seconds for all its cluster calls, and a check that ran out backs off;
* ``one pool``: a single worker consuming both queues with the same total concurrency (a deployment that runs
  one worker for everything), as a comparison.

Printed: the healthy deploy's seconds per scenario and layout, and the slowdown against the baseline.
Target: with the split layout, the healthy deploy beside a hung cluster within a few seconds of the baseline.

Usage: python benchmarks/hung_cluster.py [--hung 2] [--main-concurrency 2] [--poll-concurrency 4]
(PostgreSQL database ``budcluster_bench_hung`` and Redis db 14 by default; DATABASE_URL / CELERY_BROKER_URL
override. Worker logs in ``var/test-logs/``.)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_hung")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
os.environ["BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"] = "1"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "1")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "1")

NODE_TEMPLATE = ROOT / "tests" / "fixtures" / "nodes" / "h100-xe9680.yaml"
CONFIG = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8, "device_type": "cuda"}


def _nodes(count: int) -> list[dict]:
    template = yaml.safe_load(NODE_TEMPLATE.read_text())
    nodes = []
    for i in range(count):
        node = copy.deepcopy(template)
        name = f"h100-{i:02d}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        nodes.append(node)
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hung", type=int, default=2, help="deploys waiting on the hung cluster (default 2)")
    parser.add_argument("--main-concurrency", type=int, default=2)
    parser.add_argument("--poll-concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import redis
    from django.conf import settings

    from clusters import services as cluster_services
    from clusters.models import Cluster
    from core import workflow
    from core.choices import RunStatus, StepStatus
    from core.models import Run, RunStep
    from deployments import services
    from deployments.models import Deployment
    from devcluster.harness import DevCluster
    from devcluster.sim.config import SimConfig
    from hardware.services import refresh_inventory
    from tests.worker import WorkerProcess, wait_for

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    Run.objects.all().delete()
    Deployment.objects.all().delete()
    Cluster.objects.all().delete()
    sim = SimConfig(job_duration=2.0, pod_start_delay=1.0, pod_ready_delay=1.0)
    dc = DevCluster(nodes=_nodes(1), names=["healthy", "hung"], sim_config=sim).start()
    clusters = {}
    for name in dc.names:
        checked = cluster_services.validate(dc.kubeconfig_yaml(name).encode())
        cluster = Cluster.objects.create(
            name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status="available"
        )
        with cluster_services.gateway_for(cluster) as gw:
            refresh_inventory(cluster, gw)
        clusters[name] = cluster
    counter = iter(range(10_000))
    env = {"BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS": "1"}
    main_q, poll_q = "celery", settings.WORKFLOW_POLL_QUEUE

    def start(cluster_name: str) -> Run:
        _, run = services.start_deploy(
            clusters[cluster_name], name=f"d{next(counter):03d}", config=dict(CONFIG)
        )
        return run

    def timed_healthy_deploy() -> float:
        t0 = time.monotonic()
        run = start("healthy")
        wait_for(
            lambda: Run.objects.get(pk=run.pk).status in RunStatus.terminal(),
            timeout=args.timeout,
            interval=0.05,
            what="the healthy deploy",
        )
        elapsed = time.monotonic() - t0
        run.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"the healthy deploy ended {run.status}: {run.error}")
        return elapsed

    def delete_all() -> None:
        """Free the GPUs for the next scenario: cancel what still runs, delete every deployment."""
        for run in Run.objects.filter(status__in=RunStatus.active()):
            workflow.request_cancel(run, reason="benchmark scenario over")
        wait_for(
            lambda: not Run.objects.filter(status__in=RunStatus.active()).exists(),
            timeout=args.timeout,
            what="runs to settle",
        )
        for deployment in Deployment.objects.exclude(status__in=["deleting", "deleted"]):
            services.start_delete(deployment)
        wait_for(
            lambda: not Run.objects.filter(status__in=RunStatus.active()).exists(),
            timeout=args.timeout,
            what="deletions",
        )

    def beside_a_hung_cluster() -> float:
        hung = [start("hung") for _ in range(args.hung)]
        wait_for(
            lambda: RunStep.objects.filter(
                run__in=hung, name="wait_ready", status__in=[StepStatus.RUNNING, StepStatus.WAITING]
            ).count()
            == len(hung),
            timeout=args.timeout,
            what="the hung cluster's deploys to wait for their pods",
        )
        dc.set_fault("hung", "unreachable", delay=3600)
        try:
            return timed_healthy_deploy()
        finally:
            dc.set_fault("hung", "clear")
            delete_all()

    layouts = {
        "split": [
            dict(name="hung-main", queues=[main_q], concurrency=args.main_concurrency),
            dict(name="hung-polls", queues=[poll_q], concurrency=args.poll_concurrency),
        ],
        "one pool": [
            dict(
                name="hung-one",
                queues=[main_q, poll_q],
                concurrency=args.main_concurrency + args.poll_concurrency,
            )
        ],
    }
    results: dict[str, dict[str, float]] = {}
    try:
        for layout, specs in layouts.items():
            workers = [WorkerProcess(extra_env=env, **spec).start() for spec in specs]
            try:
                timed_healthy_deploy()  # warm-up: every pool process has served a deploy
                delete_all()
                alone = timed_healthy_deploy()
                delete_all()
                beside = beside_a_hung_cluster()
                results[layout] = {"alone": alone, "beside": beside}
            finally:
                for worker in workers:
                    worker.stop()
    finally:
        dc.stop()

    deadline = float(settings.WORKFLOW_POLL_CHECK_DEADLINE)
    print(
        f"\nhealthy deploy beside {args.hung} deploys on a hung cluster; poll interval "
        f"{os.environ['DEPLOY_POLL_INTERVAL']} s, poll check deadline {deadline:g} s, simulated copy "
        f"{sim.job_duration:g} s, pod start/ready {sim.pod_start_delay:g} s + {sim.pod_ready_delay:g} s"
    )
    print(f"{'layout':<34} {'alone (s)':>10} {'beside hung (s)':>16} {'slowdown (s)':>13}")
    for layout, r in results.items():
        if layout == "split":
            shape = f"split: main -c {args.main_concurrency} + polls -c {args.poll_concurrency}"
        else:
            shape = f"one pool: -c {args.main_concurrency + args.poll_concurrency}, both queues"
        print(f"{shape:<34} {r['alone']:>10.1f} {r['beside']:>16.1f} {r['beside'] - r['alone']:>13.1f}")


if __name__ == "__main__":
    main()
