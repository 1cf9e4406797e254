"""Fault matrix: a worker SIGKILLed inside every step of the cluster and deployment workflows, on a devcluster.

Workflows, in the order a cluster lives them: register → collect node information → deploy a model → delete the
deployment → delete the cluster. Each runs once with every one of its steps armed with the ``crash-after``
failpoint (``WORKFLOW_FAILPOINTS``, see ``core/workflow.py``): the worker kills itself (SIGKILL of its process
group) after the step's body did its work and before the step's outcome is recorded, the hardest point for
idempotence. A fresh worker takes over each time, and ``celery beat`` runs the reaper as in production (every
5 s, from the database schedule). Liveness settings are the production defaults unless ``--fast``.

Printed per kill point: workflow, step, the run's terminal state, resume seconds (from the kill to the step
claimed again by a new worker), and duplicates — objects in the deployment's namespace beyond one of each,
revisions beyond one per release, and "succeeded" events beyond one per step (a step recorded twice).
Target: every run succeeded, 0 duplicates, resume ≤ 30 s.

Usage: python benchmarks/fault_matrix.py [--only register,deploy] [--fast]
(PostgreSQL database ``budcluster_bench_faults`` and Redis db 12 by default; DATABASE_URL / CELERY_BROKER_URL
override.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_faults")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
os.environ["BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"] = "1"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.5")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.5")
os.environ.setdefault("COLLECTOR_POLL_INTERVAL", "1")

WORKFLOWS = ("register", "collect", "deploy", "delete-deployment", "delete-cluster")
KINDS = {
    "register": "cluster.register",
    "collect": "hardware.collect",
    "deploy": "deployment.deploy",
    "delete-deployment": "deployment.delete",
    "delete-cluster": "cluster.delete",
}
NAMESPACED = (
    ("Deployment", "apps/v1"), ("Service", "v1"), ("Job", "batch/v1"), ("PersistentVolumeClaim", "v1"),
    ("ReplicaSet", "apps/v1"),
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(WORKFLOWS), help="comma-separated subset of " + ", ".join(WORKFLOWS)
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="test liveness settings (heartbeat 0.5 s, stale 4 s): checks, not figures",
    )
    args = parser.parse_args()
    if args.fast:
        os.environ["WORKFLOW_HEARTBEAT_INTERVAL"], os.environ["WORKFLOW_STALE_AFTER"] = "0.5", "4"
    wanted = [w for w in WORKFLOWS if w in args.only.split(",")]

    from benchmarks.common import setup_django

    setup_django()
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from clusters.models import Cluster
    from devcluster.harness import DevCluster
    from devcluster.sim.config import SimConfig
    from tests.worker import WorkerProcess, crash_inside_each_step

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    Cluster.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="fault-matrix", defaults={"is_superuser": True})
    user.is_superuser = user.is_staff = True
    user.save()
    api = APIClient(HTTP_HOST="localhost")
    api.force_authenticate(user)

    dc = DevCluster(nodes="gpu-mixed", sim_config=SimConfig(job_duration=1.0)).start()
    env = {"BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS": "1"}
    session = WorkerProcess(name="fault-matrix", extra_env=env).start()
    beat_log = open(ROOT / "var" / "fault-matrix-beat.log", "wb")  # noqa: SIM115
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "budcluster_site", "beat", "-l", "INFO",
         "--pidfile", str(ROOT / "var" / "fault-matrix-beat.pid")],
        cwd=ROOT, env=os.environ.copy(), stdout=beat_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    state: dict = {}
    rows: list[tuple] = []
    try:
        for name in wanted:
            rows += _one_workflow(name, state, api, dc, session, env, crash_inside_each_step)
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        session.stop()
        dc.stop()
    _print(rows)


def _steps(kind: str) -> list[str]:
    from core.workflow import get_workflow

    return [s.name for s in get_workflow(kind).steps]


def _one_workflow(name, state, api, dc, session, env, crash_inside_each_step) -> list[tuple]:
    from clusters.models import Cluster

    def register():
        response = api.post(
            "/clusters/register", {"name": "matrix", "kubeconfig": dc.kubeconfig_yaml()}, format="json"
        )
        assert response.status_code == 202, response.json()
        return Cluster.objects.get(name="matrix"), response.json()["run_id"]

    def collect():
        response = api.post(f"/clusters/{state['cluster'].pk}/collect-node-info")
        assert response.status_code == 202, response.json()
        return state["cluster"], response.json()["run_id"]

    def deploy():
        from deployments.models import Deployment

        body = {"cluster": state["cluster"].pk, "name": "matrix", "model": "llama-3.1-8b-instruct",
                "context_len": 4096, "concurrency": 8}  # fmt: skip
        response = api.post("/deployments/deploy", body, format="json")
        assert response.status_code == 202, response.json()
        return Deployment.objects.get(pk=response.json()["deployment_id"]), response.json()["run_id"]

    def delete_deployment():
        response = api.delete(f"/deployments/{state['deployment'].pk}")
        assert response.status_code == 202, response.json()
        return state["deployment"], response.json()["run_id"]

    def delete_cluster():
        response = api.delete(f"/clusters/{state['cluster'].pk}?force=true")
        assert response.status_code == 202, response.json()
        return state["cluster"], response.json()["run_id"]

    start = {"register": register, "collect": collect, "deploy": deploy,
             "delete-deployment": delete_deployment, "delete-cluster": delete_cluster}[name]  # fmt: skip
    steps = _steps(KINDS[name])
    subject, run, kills = crash_inside_each_step(
        session, start, steps, name=name, extra_env=env, timeout=60 * len(steps), reap=False
    )
    if name in ("register",):
        state["cluster"] = subject
    if name == "deploy":
        state["deployment"] = subject
    objects, revisions = _duplicates(name, state)
    rows = []
    for step in steps:
        killed = run.events.filter(step=step, status="failpoint").order_by("id").first()
        resumed = (
            run.events.filter(step=step, message__contains="resumed on a new worker").order_by("id").first()
        )
        seconds = (resumed.created_at - killed.created_at).total_seconds() if killed and resumed else None
        events = max(0, run.events.filter(step=step, status="succeeded").count() - 1)
        rows.append((name, step, run.status, seconds, objects, revisions, events, bool(killed)))
    print(f"{name}: {run.status} after {kills} kills", flush=True)
    return rows


def _duplicates(name: str, state: dict) -> tuple[int, int]:
    """(objects beyond one of each kind in the deployment's namespace, revisions beyond one per release)."""
    from django.db.models import Count

    from clusters.models import Revision
    from clusters.services import gateway_for

    if name != "deploy" or "deployment" not in state:
        extra_revisions = sum(
            max(0, n - 1)
            for n in Revision.objects.filter(release__cluster=state.get("cluster"))
            .values("release_id")
            .annotate(n=Count("id"))
            .values_list("n", flat=True)
        ) if name in ("register", "collect") else 0  # fmt: skip
        return 0, extra_revisions
    deployment = state["deployment"]
    with gateway_for(deployment.cluster) as gw:
        counts = [len(gw.list(api_version, kind, deployment.namespace)) for kind, api_version in NAMESPACED]
    revisions = (
        Revision.objects.filter(release__namespace=deployment.namespace)
        .values("release_id")
        .annotate(n=Count("id"))
    )
    return sum(max(0, c - 1) for c in counts), sum(max(0, r["n"] - 1) for r in revisions)


def _print(rows: list[tuple]) -> None:
    print()
    print(f"{'workflow':<18} {'step':<22} {'terminal':<10} {'resume s':>9}  dup objects/revisions/events")
    for name, step, status, seconds, objects, revisions, events, killed in rows:
        resume = f"{seconds:9.1f}" if seconds is not None else ("  no kill" if not killed else "        -")
        print(f"{name:<18} {step:<22} {status:<10} {resume}  {objects}/{revisions}/{events}")
    resumes = [r[3] for r in rows if r[3] is not None]
    if resumes:
        print(
            f"\nkill points: {len(rows)}; resumed: {len(resumes)}; resume s min {min(resumes):.1f} "
            f"median {sorted(resumes)[len(resumes) // 2]:.1f} max {max(resumes):.1f}; "
            f"runs not succeeded: {sum(1 for r in rows if r[2] != 'succeeded')}; "
            f"duplicates: {sum(r[4] + r[5] + r[6] for r in rows)}"
        )


if __name__ == "__main__":
    main()
