"""Fault matrix: a worker SIGKILLed inside every step of every workflow, and PostgreSQL, Redis and the Kubernetes
API restarted under a deploy, on a devcluster.

Workflows (targets), in the order a cluster lives them: ``register`` → ``collect`` (node information) → ``deploy``
a model → ``update`` it (scale to 2 replicas and change its engine args: a new revision) → ``rollback`` (to
revision 1, re-applied as a new revision) → ``benchmark`` it → ``delete-deployment`` → ``delete-cluster``; then
``provision`` a cluster with the local Terraform stand-in (``terraform/testing/local-cluster``, real Terraform and
its ``null`` provider from ``provisioning.toolchain``'s offline mirror, the pg state backend, auto-approved;
its kubeconfig points at a second devcluster virtual cluster, which the provisioning then registers) →
``delete-provisioned`` (``terraform destroy`` through the cluster deletion). Each runs once with every one of
its steps armed with the ``crash-after`` failpoint (``WORKFLOW_FAILPOINTS=kind/step:crash-after``, see
``core/workflow.py``): the worker kills itself (SIGKILL of its process group) after the step's body did its work
and before the step's outcome is recorded, the hardest point for idempotence. A fresh worker takes over each
time, and ``celery beat`` runs the reaper as in production (every 5 s, from the database schedule). A target
whose subject is missing (``--only update`` alone) first gets it from plain runs (no failpoints, not in the
table). Liveness settings are the production defaults unless ``--fast``.

Outage scenarios (``--outages``, or by name in ``--only``): a deploy is started and, once it reaches
``--outage-at`` (default ``wait_transfer``), a service goes away and comes back on the same address:

* ``redis-restart``: the broker is stopped and started empty (no persistence: queued, unacknowledged and
  countdown messages are all lost) once the run has gone quiet (no event, no heartbeat for
  ``WORKFLOW_STALE_AFTER`` + 1 s, so the reaper's attempt to resume it fails too) or after ``--outage-seconds``;
  meanwhile ``/health/broker``, ``GET /clusters`` and a run launch (``POST /clusters/{id}/collect-node-info``)
  are called every second;
* ``postgres-restart``: the database is shut down (``pg_ctl stop -m fast``) for ``--outage-seconds``, then
  started again; meanwhile ``GET /health/db`` and ``GET /clusters`` are called through the API client every
  second (they must answer 503, never 500);
* ``kube-restart``: the devcluster (the Kubernetes API) is stopped for ``--outage-seconds`` and started again
  on the same port with the same CA, tokens and objects (``DevCluster(state_dir=...)``, then ``stop()`` and
  ``start()``; the line after the tables says whether port, CA and token were indeed the same); meanwhile the
  cluster's live health and the deployment are read through the API.

Two targets aim at one point each:

* ``delete-cluster-midway``: a deploy (with an HF token Secret), then the cluster deleted (force) on a worker that
  SIGKILLs itself inside teardown after every release was marked uninstalled and before the namespaces are deleted
  (``WORKFLOW_FAILPOINTS=teardown.uninstalled:crash``, a point inside the step's body); its "objects" column
  counts the namespace and Secret still on the cluster after the rerun (target 0);
* ``broker-lost-at-start`` (an outage scenario): ``POST /deployments/deploy`` with an ``Idempotency-Key`` while the
  broker dies between the launch's check and the commit hook's send; the answer must be 202 (the run is stored),
  the client's retry with the same key the same run, a start without a key meanwhile 503; the broker comes back
  after ``--outage-seconds`` and the reaper sends the run. Its "objects" column counts deployments beyond one,
  "revisions" deploy runs beyond one.

Redis and PostgreSQL are never the machine's own (others use them): with ``--private-services`` (the default when
an outage scenario is selected) the matrix starts its own instances on free ports for the whole run
(``benchmarks/private_services.py``) and removes them at the end.

Printed per kill point: workflow, step, the run's terminal state, resume seconds (from the kill to the step
claimed again by a new worker), and duplicates — objects: for deployments the objects in its namespace beyond one
of each kind (ReplicaSets: those with replicas), for benchmarks the benchmark rows of the run beyond one, for
provisioning the Terraform resources created (or destroyed) more than once plus registration runs beyond one;
revisions: revisions beyond the expected count per release (one each after a deploy or registration; the count
before the run, plus one for the runtime release, after an update or a rollback; unchanged by a benchmark);
events: "succeeded" events beyond one per step (a step recorded twice). A line per workflow adds what the user
would check (the deployment running, the benchmark row, the Terraform state dropped).
Target: every run succeeded, 0 duplicates, resume ≤ 30 s.

Printed per outage: the step the run was at, outage seconds, seconds until the run showed it (went quiet, or a
step reported the API unreachable; "-" when not seen or, for the database, not observable), the run's terminal
state, seconds from the service coming back to the run's next event (resume) and to its end (finish), the
documented bound on resume (``WORKFLOW_STALE_AFTER`` + the reaper's 5 s for the database and the broker, whose
loss stops a run's messages; ``WORKFLOW_RETRY_MAX_DELAY`` for the Kubernetes API, whose failures are retried in
the step), duplicates as for a deploy, events recorded before the outage that are gone after it (lost), and every
API answer meanwhile (status, error code, count); then whether the reaper had to resume the run, the most attempts
of one step, and whether beat and the worker lived through it. Target: succeeded, resume within the bound, 0
duplicates, 0 lost, only 503s while a dependency is down (never 500).

Usage: python benchmarks/fault_matrix.py [--only register,deploy,delete-cluster-midway,...] [--outages] [--fast]
       [--private-services | --no-private-services] [--outage-seconds 10] [--outage-at wait_transfer]
(PostgreSQL database ``budcluster_bench_faults`` and Redis db 12 by default; DATABASE_URL / CELERY_BROKER_URL
override; with private services both point at the private instances. Logs: ``var/fault-matrix-beat.log``, the
workers' in ``var/test-logs/``.)
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
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
os.environ.setdefault("PROVISIONING_POLL_INTERVAL", "0.5")
# The local stand-in module for every provisioning of this process and its workers (a test aid, see
# provisioning.services); its variables point it at a devcluster virtual cluster (set once Django is up).
os.environ["PROVISIONING_MODULE_OVERRIDE"] = "terraform/testing/local-cluster"

WORKFLOWS = (
    "register", "collect", "deploy", "update", "rollback", "benchmark", "delete-deployment",
    "delete-cluster-midway", "delete-cluster", "provision", "delete-provisioned",
)  # fmt: skip
OUTAGES = ("redis-restart", "postgres-restart", "kube-restart", "broker-lost-at-start")
# The one kill point inside a step's body (``ctx.failpoint``): cluster deletion's teardown after every release
# was marked uninstalled, before the namespaces are deleted (a namespace and its HF token Secret were left).
MIDWAY_POINT = "teardown.uninstalled"
KINDS = {
    "delete-cluster-midway": "cluster.delete",
    "register": "cluster.register",
    "collect": "hardware.collect",
    "deploy": "deployment.deploy",
    "update": "deployment.update",
    "rollback": "deployment.rollback",
    "benchmark": "deployment.benchmark",
    "delete-deployment": "deployment.delete",
    "delete-cluster": "cluster.delete",
    "provision": "cluster.provision",
    "delete-provisioned": "cluster.delete",
}
NAMESPACED = (
    ("Deployment", "apps/v1"), ("Service", "v1"), ("Job", "batch/v1"), ("PersistentVolumeClaim", "v1"),
    ("ReplicaSet", "apps/v1"),
)  # fmt: skip
# Virtual clusters of the devcluster: the one registered, the one the local module "provisions".
REGISTERED, PROVISIONED = "c0001", "c0002"
NODE_POOLS = [
    {"name": "system", "instance_type": "m6i.large", "min_size": 1, "max_size": 3, "desired_size": 2},
    {
        "name": "gpu",
        "role": "gpu",
        "instance_type": "g5.xlarge",
        "min_size": 0,
        "max_size": 2,
        "desired_size": 1,
    },
]
TERRAFORM_RESOURCES = 5  # the local module: network + control plane + one per desired node
UPDATE = {"replicas": 2, "engine_args": ["--enable-prefix-caching"]}
BENCHMARK = {"requests": 24, "concurrency": 4, "input_tokens": 32, "output_tokens": 16}
REAPER_PERIOD = 5.0  # beat's schedule of the reaper (the periodic task the migrations create)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(WORKFLOWS),
        help="comma-separated subset of " + ", ".join(WORKFLOWS + OUTAGES) + " (default: every workflow)",
    )
    parser.add_argument(
        "--outages", action="store_true", help="add the outage scenarios: " + ", ".join(OUTAGES)
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="test liveness settings (heartbeat 0.5 s, stale 4 s): checks, not figures",
    )
    parser.add_argument(
        "--private-services",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the whole matrix on private PostgreSQL and Redis instances (default: when an outage is selected)",
    )
    parser.add_argument(
        "--outage-seconds", type=float, default=10.0, help="longest outage of each scenario (default 10)"
    )
    parser.add_argument(
        "--outage-at", default="wait_transfer", help="deploy step at which the service goes away"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(WORKFLOWS + OUTAGES))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(WORKFLOWS + OUTAGES)}")
    if args.outages:
        names += OUTAGES
    wanted = [w for w in WORKFLOWS + OUTAGES if w in names]
    outages = [w for w in wanted if w in OUTAGES]
    private = args.private_services if args.private_services is not None else bool(outages)
    if outages and not private:
        parser.error("outage scenarios restart PostgreSQL and Redis: they need --private-services")
    if args.fast:
        os.environ["WORKFLOW_HEARTBEAT_INTERVAL"], os.environ["WORKFLOW_STALE_AFTER"] = "0.5", "4"

    with ExitStack() as stack:
        services = None
        if private:
            from benchmarks.private_services import private_services

            services = stack.enter_context(private_services())
            pg, broker = services
            os.environ["DATABASE_URL"] = pg.url("budcluster_bench_faults")
            os.environ["CELERY_BROKER_URL"] = broker.url(0)
            print(f"private PostgreSQL on :{pg.port}, Redis on :{broker.port}", flush=True)
        from provisioning.toolchain import provider_mirror_config

        # Workers inherit it: hashicorp/null from the offline mirror, nothing from a registry.
        os.environ["TF_CLI_CONFIG_FILE"] = str(
            provider_mirror_config(ROOT / "var" / "fault-matrix" / "terraform-toolchain")
        )
        matrix = Matrix(args, services, stack)
        matrix.run(wanted)


class Matrix:
    """The devcluster, the API client, the session worker and beat, and the subjects the targets pass on."""

    def __init__(self, args, services, stack: ExitStack) -> None:
        from benchmarks.common import setup_django

        setup_django()
        import redis
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from rest_framework.test import APIClient

        from clusters.models import Cluster
        from devcluster.sim.config import SimConfig
        from tests.worker import WorkerProcess

        self.args = args
        self.services = services
        self.settings = settings
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
        Cluster.objects.all().delete()
        _drop_terraform_states()
        user, _ = get_user_model().objects.get_or_create(
            username="fault-matrix", defaults={"is_superuser": True}
        )
        user.is_superuser = user.is_staff = True
        user.save()
        self.api = APIClient(HTTP_HOST="localhost")
        self.api.force_authenticate(user)
        # Outage probes record what a client sees: a 500 must be a status, not an exception in this process.
        self.probe = APIClient(HTTP_HOST="localhost", raise_request_exception=False)
        self.probe.force_authenticate(user)

        self.sim_config = SimConfig(job_duration=1.0)
        self.state_dir = Path(tempfile.mkdtemp(prefix="fault-matrix-devcluster-"))
        stack.callback(shutil.rmtree, self.state_dir, ignore_errors=True)
        self.dc = self._devcluster()
        stack.callback(lambda: self.dc.stop())
        self.env = {"BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS": "1"}
        self.session = WorkerProcess(name="fault-matrix", extra_env=self.env).start()
        stack.callback(self.session.stop)
        self.beat = self._start_beat()
        stack.callback(self._stop_beat)
        self._module_variables()
        self.state: dict = {}
        self.rows: list[tuple] = []
        self.notes: list[str] = []
        self.outage_rows: list[dict] = []

    # --- processes ------------------------------------------------------------------------------------------

    def _devcluster(self, port: int = 0):
        """Two virtual clusters; with a ``state_dir`` when the harness keeps one (kube-restart needs it)."""
        import inspect

        from devcluster.harness import DevCluster

        kwargs = {"nodes": "gpu-mixed", "clusters": 2, "sim_config": self.sim_config, "port": port}
        if "state_dir" in inspect.signature(DevCluster).parameters:
            kwargs["state_dir"] = self.state_dir
        return DevCluster(**kwargs).start()

    def _start_beat(self) -> subprocess.Popen:
        self._beat_log = open(ROOT / "var" / "fault-matrix-beat.log", "wb")  # noqa: SIM115 - closed in _stop_beat
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "budcluster_site", "beat", "-l", "INFO",
             "--pidfile", str(ROOT / "var" / "fault-matrix-beat.pid")],
            cwd=ROOT, env=os.environ.copy(), stdout=self._beat_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def _stop_beat(self) -> None:
        if self.beat.poll() is None:
            self.beat.terminate()
            self.beat.wait(timeout=20)
        self._beat_log.close()

    def _module_variables(self) -> None:
        """The local module's inputs: the API server, CA and token of the virtual cluster it stands for."""
        cluster = self.dc.kubeconfig(PROVISIONED)["clusters"][0]["cluster"]
        self.settings.PROVISIONING_MODULE_VARIABLES = {
            "api_server": self.dc.cluster_url(PROVISIONED),
            "ca_data": cluster.get("certificate-authority-data") or base64.b64encode(self.dc.ca_pem).decode(),
            "token": self.dc.token(PROVISIONED),
            "resource_delay_seconds": 0,
        }

    # --- the run ----------------------------------------------------------------------------------------------

    def run(self, wanted: list[str]) -> None:
        try:
            for name in wanted:
                try:
                    if name == "delete-cluster-midway":
                        self.kill_mid_teardown()
                    elif name == "broker-lost-at-start":
                        self.broker_lost_at_start()
                    elif name in OUTAGES:
                        self.outage(name)
                    else:
                        self.crash_each_step(name)
                except Exception as exc:  # one broken target is a finding; the others still run
                    traceback.print_exc()
                    self.notes.append(f"{name}: ERROR {type(exc).__name__}: {exc}")
                    if name not in OUTAGES:
                        self.rows.append((name, "-", "error", None, 0, 0, 0, False))
            self._clean_up()
        finally:
            _print(self.rows, self.notes, self.outage_rows)

    def _clean_up(self) -> None:
        """Destroy a provisioned cluster the matrix left (its Terraform state lives in the database)."""
        from clusters.models import Cluster

        cluster = self.state.get("provisioned")
        if cluster is None or not Cluster.objects.filter(pk=cluster.pk).exists():
            return
        try:
            _, run_id = self.start("delete-provisioned")
            run = _finished(run_id, 300)
            self.notes.append(f"clean-up: provisioned cluster deleted: {run.status}")
        except Exception as exc:  # reported, and the rest of the report still prints
            self.notes.append(f"clean-up: provisioned cluster {cluster.pk} not deleted: {exc}")

    # --- starting runs (each returns (subject, run_id)) ---------------------------------------------------------

    def start(self, name: str):
        return getattr(self, "_start_" + name.replace("-", "_"))()

    def _accepted(self, response) -> str:
        assert response.status_code == 202, (response.status_code, response.content[:500])
        return response.json()["run_id"]

    def _start_register(self):
        from clusters.models import Cluster

        body = {"name": "matrix", "kubeconfig": self.dc.kubeconfig_yaml(REGISTERED)}
        run_id = self._accepted(self.api.post("/clusters/register", body, format="json"))
        return Cluster.objects.get(name="matrix"), run_id

    def _start_collect(self):
        cluster = self.state["cluster"]
        return cluster, self._accepted(self.api.post(f"/clusters/{cluster.pk}/collect-node-info"))

    def _deploy(self, name: str, **extra):
        from deployments.models import Deployment

        body = {"cluster": self.state["cluster"].pk, "name": name, "model": "llama-3.1-8b-instruct",
                "context_len": 4096, "concurrency": 8, **extra}  # fmt: skip
        response = self.api.post("/deployments/deploy", body, format="json")
        run_id = self._accepted(response)
        return Deployment.objects.get(pk=response.json()["deployment_id"]), run_id

    def _start_deploy(self):
        return self._deploy("matrix")

    def _start_update(self):
        deployment = self.state["deployment"]
        changes = dict(UPDATE)
        if deployment.replicas == changes["replicas"]:  # an update already ran (plain, for a rollback)
            changes["replicas"] = 1
        response = self.api.patch(f"/deployments/{deployment.pk}", changes, format="json")
        return deployment, self._accepted(response)

    def _start_rollback(self):
        deployment = self.state["deployment"]
        response = self.api.post(f"/deployments/{deployment.pk}/rollback", {"revision": 1}, format="json")
        return deployment, self._accepted(response)

    def _start_benchmark(self):
        deployment = self.state["deployment"]
        response = self.api.post(f"/deployments/{deployment.pk}/benchmark", BENCHMARK, format="json")
        return deployment, self._accepted(response)

    def _start_delete_deployment(self):
        deployment = self.state["deployment"]
        return deployment, self._accepted(self.api.delete(f"/deployments/{deployment.pk}"))

    def _start_delete_cluster(self):
        cluster = self.state["cluster"]
        return cluster, self._accepted(self.api.delete(f"/clusters/{cluster.pk}?force=true"))

    def _start_provision(self):
        from clusters.models import Cluster
        from provisioning.models import CloudCredential

        credential = CloudCredential.objects.filter(name="matrix-aws").first()
        if credential is None:
            body = {"name": "matrix-aws", "provider": "aws", "region": "us-east-1",
                    "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                    "secret_access_key": "matrix-not-a-real-secret"}  # fmt: skip
            response = self.api.post("/credentials", body, format="json")
            assert response.status_code == 201, response.content[:500]
            credential_id = response.json()["id"]
        else:
            credential_id = credential.pk
        body = {"name": "matrix-prov", "provider": "aws", "region": "us-east-1", "kubernetes_version": "1.31",
                "node_pools": NODE_POOLS, "credential_id": credential_id, "auto_approve": True}  # fmt: skip
        response = self.api.post("/clusters/provision", body, format="json")
        run_id = self._accepted(response)
        return Cluster.objects.get(pk=response.json()["cluster_id"]), run_id

    def _start_delete_provisioned(self):
        cluster = self.state["provisioned"]
        return cluster, self._accepted(self.api.delete(f"/clusters/{cluster.pk}"))

    # --- subjects -----------------------------------------------------------------------------------------------

    def _keep(self, name: str, subject) -> None:
        key = {"register": "cluster", "deploy": "deployment", "provision": "provisioned"}.get(name)
        if key:
            self.state[key] = subject

    def _plain(self, name: str) -> None:
        """Run ``name`` on the session worker, no failpoints: a subject a later target needs."""
        subject, run_id = self.start(name)
        run = _finished(run_id, 300)
        if run.status != "succeeded":
            raise RuntimeError(f"prerequisite {name} {run.status}: {run.error[:300]}")
        self._keep(name, subject)
        print(f"({name}: plain run succeeded, for the targets after it)", flush=True)

    def need(self, name: str) -> None:
        from clusters.models import Cluster
        from deployments.models import Deployment

        needs_cluster = name not in ("register", "provision", "delete-provisioned")
        cluster = self.state.get("cluster")
        if needs_cluster and not (
            cluster and Cluster.objects.filter(pk=cluster.pk, status="available").exists()
        ):
            self._plain("register")
        if name in ("update", "rollback", "benchmark", "delete-deployment"):
            deployment = self.state.get("deployment")
            if not (deployment and Deployment.objects.filter(pk=deployment.pk, status="running").exists()):
                self._plain("deploy")
            self.state["deployment"].refresh_from_db()
        if name == "delete-provisioned":
            provisioned = self.state.get("provisioned")
            if not (provisioned and Cluster.objects.filter(pk=provisioned.pk).exists()):
                self._plain("provision")

    # --- crash matrix -------------------------------------------------------------------------------------------

    def crash_each_step(self, name: str) -> None:
        from tests.worker import crash_inside_each_step

        self.need(name)
        kind = KINDS[name]
        steps = _steps(kind)
        before = self._before(name)
        # Kind-qualified: a step of the same name in another run (a registration the provisioning starts) is spared.
        armed = [f"{kind}/{step}" for step in steps]
        subject, run, kills = crash_inside_each_step(
            self.session, lambda: self.start(name), armed, name=name, extra_env=self.env,
            timeout=60 * len(steps), reap=False,
        )  # fmt: skip
        self._keep(name, subject)
        objects, revisions = self._duplicates(name, run, before)
        for step in steps:
            killed = run.events.filter(step=step, status="failpoint").order_by("id").first()
            resumed = (
                run.events.filter(step=step, message__contains="resumed on a new worker")
                .order_by("id")
                .first()
            )
            seconds = (resumed.created_at - killed.created_at).total_seconds() if killed and resumed else None
            events = max(0, run.events.filter(step=step, status="succeeded").count() - 1)
            self.rows.append((name, step, run.status, seconds, objects, revisions, events, bool(killed)))
        check = self._check(name, run, subject)
        line = f"{name}: {run.status} after {kills} kills" + (f"; {check}" if check else "")
        if run.status != "succeeded":
            line += f"; error: {run.error[:300]}"
        self.notes.append(line)
        print(line, flush=True)

    def _before(self, name: str) -> dict:
        """Revision count per release of the deployment's namespace, before a day-2 run."""
        from django.db.models import Count

        from clusters.models import Revision

        deployment = self.state.get("deployment")
        if name not in ("update", "rollback", "benchmark") or deployment is None:
            return {}
        rows = (
            Revision.objects.filter(
                release__cluster=deployment.cluster, release__namespace=deployment.namespace
            )
            .values("release_id")
            .annotate(n=Count("id"))
        )
        return {r["release_id"]: r["n"] for r in rows}

    def _duplicates(self, name: str, run, before: dict) -> tuple[int, int]:
        """(duplicated objects, revisions beyond the expected count per release) after ``run``."""
        from clusters.models import Revision
        from deployments.models import Benchmark

        if name in ("register", "collect"):
            return 0, _extra_revisions(Revision.objects.filter(release__cluster=self.state.get("cluster")))
        if name in ("deploy", "update", "rollback", "benchmark"):
            deployment = self.state["deployment"]
            deployment.refresh_from_db()
            expected = dict(before)
            if name in ("update", "rollback") and deployment.release_id:
                expected[deployment.release_id] = before.get(deployment.release_id, 0) + 1
            revisions = Revision.objects.filter(
                release__cluster=deployment.cluster, release__namespace=deployment.namespace
            )
            objects = _namespace_duplicates(deployment)
            if name == "benchmark":
                objects += max(0, Benchmark.objects.filter(run_id=run.pk).count() - 1)
            return objects, _extra_revisions(revisions, expected)
        if name == "provision":
            cluster = self.state["provisioned"]
            registrations = run.steps.get(name="outputs").output.get("registration_run")
            extra_registrations = (
                max(0, _runs_of(cluster, "cluster.register") - 1) if registrations else 0
            )  # fmt: skip
            return (
                _terraform_repeats(run, "apply", "create") + extra_registrations,
                _extra_revisions(Revision.objects.filter(release__cluster=cluster)),
            )
        if name == "delete-provisioned":
            return _terraform_repeats(run, "destroy", "delete"), 0
        return 0, 0

    def _check(self, name: str, run, subject) -> str:
        """What a user would look at after the run, in a few words."""
        from clusters.models import Cluster
        from deployments.models import Benchmark, Deployment

        if name in ("deploy", "update", "rollback"):
            deployment = Deployment.objects.get(pk=subject.pk)
            revision = deployment.release.current_revision if deployment.release else None
            return (
                f"deployment {deployment.status}, replicas {deployment.replicas}, "
                f"engine_args {deployment.engine_args}, revision {revision}"
            )
        if name == "benchmark":
            row = Benchmark.objects.filter(run_id=run.pk).first()
            if row is None:
                return "no benchmark row"
            return f"benchmark row {row.status}, {row.successful_requests}/{BENCHMARK['requests']} requests succeeded"
        if name == "delete-deployment":
            return f"deployment {Deployment.objects.get(pk=subject.pk).status}"
        if name in ("delete-cluster", "delete-provisioned"):
            gone = not Cluster.objects.filter(pk=subject.pk).exists()
            left = f"; Terraform state schema left: {_schema_exists(f'tf_cluster_{subject.pk}')}"
            return f"cluster row gone: {gone}" + (left if name == "delete-provisioned" else "")
        if name == "provision":
            cluster = Cluster.objects.get(pk=subject.pk)
            created = len({e.data.get("address") for e in _terraform_events(run, "apply", "create")})
            return (
                f"cluster {cluster.status}, {created}/{TERRAFORM_RESOURCES} resources created, "
                f"{cluster.nodes.count()} nodes in the inventory"
            )
        if name in ("register", "collect"):
            cluster = Cluster.objects.get(pk=subject.pk)
            return f"cluster {cluster.status}, {cluster.nodes.count()} nodes in the inventory"
        return ""

    # --- the kill point inside cluster deletion's teardown ------------------------------------------------------

    def kill_mid_teardown(self) -> None:
        """Deploy (with an HF token: a Secret in its namespace), then delete the cluster (force) on a worker that
        SIGKILLs itself after every release was marked uninstalled, before the namespaces went. The rerun must
        still delete the namespace: "objects" counts the namespace and Secret still there after it."""
        from core.gateway import ClusterGateway, NotFound
        from deployments.charts import HF_SECRET
        from tests.worker import kill_worker_during_step

        name = "delete-cluster-midway"
        self.need(name)
        deployment, run_id = self._deploy("midway", hf_token="hf_matrix_not_a_real_token")
        deployed = _finished(run_id, 300)
        if deployed.status != "succeeded":
            raise RuntimeError(f"deploy before the deletion {deployed.status}: {deployed.error[:300]}")
        _, run = kill_worker_during_step(
            self.session, self._start_delete_cluster, MIDWAY_POINT, name="midway", extra_env=self.env,
            timeout=180, action="crash",
        )  # fmt: skip

        def left() -> int:
            with ClusterGateway(self.dc.kubeconfig(REGISTERED), timeout=10, allow_loopback=True) as gw:
                count = 0
                for args in (
                    ("v1", "Secret", HF_SECRET, deployment.namespace),
                    ("v1", "Namespace", deployment.namespace),
                ):
                    try:
                        gw.get(*args)
                        count += 1
                    except NotFound:
                        pass
                return count

        deadline = time.monotonic() + 60  # a namespace being deleted terminates first
        while (objects := left()) and time.monotonic() < deadline:
            time.sleep(0.5)
        step = MIDWAY_POINT.partition(".")[0]
        killed = run.events.filter(step=step, status="failpoint").order_by("id").first()
        resumed = (
            run.events.filter(step=step, message__contains="resumed on a new worker").order_by("id").first()
        )
        seconds = (resumed.created_at - killed.created_at).total_seconds() if killed and resumed else None
        events = max(0, run.events.filter(step=step, status="succeeded").count() - 1)
        self.rows.append((name, MIDWAY_POINT, run.status, seconds, objects, 0, events, bool(killed)))
        line = (
            f"{name}: {run.status}; namespace {deployment.namespace} and Secret {HF_SECRET} left on the "
            f"cluster: {objects}; resumed_count {run.resumed_count}"
        )
        self.notes.append(line)
        print(line, flush=True)

    # --- a start whose broker goes away after the commit ---------------------------------------------------------

    def broker_lost_at_start(self) -> None:
        """``POST /deployments/deploy`` (with an ``Idempotency-Key``) while the broker dies between the launch's
        check and the commit hook's send: 202 and a PENDING run; the client's retry with the same key while the
        broker is down gets the same run; a start without a key meanwhile is refused (503, nothing stored); the
        broker comes back after ``--outage-seconds`` and the reaper sends the run, which must succeed once, with
        one deployment of that name."""
        from django.db import transaction
        from django.db.models.signals import post_save
        from django.utils import timezone

        from core.models import Run
        from deployments.models import Deployment

        name = "broker-lost-at-start"
        self.need(name)
        broker = self.services[1]
        body = {"cluster": self.state["cluster"].pk, "name": "brokerless", "model": "llama-3.1-8b-instruct",
                "context_len": 4096, "concurrency": 8, "hf_token": "hf_matrix_not_a_real_token"}  # fmt: skip
        key = {"HTTP_IDEMPOTENCY_KEY": "matrix-brokerless-1"}

        def broker_dies(sender, instance, created, **kwargs):
            if created:
                transaction.on_commit(broker.stop)

        post_save.connect(broker_dies, sender=Run)
        try:
            first = self.probe.post("/deployments/deploy", body, format="json", **key)
        finally:
            post_save.disconnect(broker_dies, sender=Run)
        began = time.monotonic()
        answers: collections.Counter = collections.Counter(
            {("POST deploy (the start)", _answer(lambda: first)): 1}
        )
        run_id = first.json().get("run_id") if first.status_code == 202 else None
        retry = self.probe.post("/deployments/deploy", body, format="json", **key)
        same = run_id is not None and retry.status_code == 202 and retry.json().get("run_id") == run_id
        answers[("POST deploy (retry, same key)", _answer(lambda: retry))] += 1
        other = {**body, "name": "brokerless-2"}
        answers[
            (
                "POST deploy (no key)",
                _answer(lambda: self.probe.post("/deployments/deploy", other, format="json")),
            )
        ] += 1
        time.sleep(max(0.0, self.args.outage_seconds - (time.monotonic() - began)))
        broker.start()
        back = timezone.now()
        outage = time.monotonic() - began
        if run_id is None:
            raise RuntimeError(f"the start was not accepted: {first.status_code} {first.content[:300]!r}")
        run = _db_wait(lambda: _terminal(run_id), timeout=600, what=f"run {run_id} to finish")
        started = run.events.filter(step="", status="running").order_by("id").first()
        deployment = Deployment.objects.get(pk=first.json()["deployment_id"])
        # "objects": deployments beyond the one started (a retry that made a second); "revisions": runs beyond one.
        extra_deployments = Deployment.objects.filter(name__startswith="brokerless").count() - 1
        extra_runs = Run.objects.filter(kind="deployment.deploy", subject_id=str(deployment.pk)).count() - 1
        self.outage_rows.append(
            {
                "scenario": name, "at": "POST deploy", "outage": outage, "noticed": None, "status": run.status,
                "resume": (started.created_at - back).total_seconds() if started else None,
                "finish": (run.finished_at - back).total_seconds() if run.finished_at else None,
                "bound": float(self.settings.WORKFLOW_STALE_AFTER) + REAPER_PERIOD,
                "objects": _namespace_duplicates(deployment) + extra_deployments, "revisions": extra_runs,
                "events": 0, "lost": 0, "answers": answers,
                "after": {"retry with the same Idempotency-Key got the first run": "yes" if same else "NO"},
                "deployment": Deployment.objects.get(pk=deployment.pk).status, "error": run.error[:300],
                "last_step": "", "reaped": run.events.filter(status="resumed").count(),
                "attempts": max(run.steps.values_list("attempt", flat=True)),
                "beat": "alive" if self.beat.poll() is None else f"exited {self.beat.returncode}",
                "worker": "alive" if self.session.proc.poll() is None else f"exited {self.session.proc.returncode}",
            }
        )  # fmt: skip
        print(f"{name}: {run.status}; retry got the same run: {same}", flush=True)
        response = self.api.delete(f"/deployments/{deployment.pk}")
        if response.status_code == 202:
            _finished(response.json()["run_id"], 300)

    # --- outages ----------------------------------------------------------------------------------------------

    def outage(self, name: str) -> None:
        """Deploy; at ``--outage-at`` take the service away, probe the API, bring it back; follow the run."""
        from django.utils import timezone

        from clusters.models import Cluster, Revision

        self.need("deploy")
        cluster = self.state["cluster"]
        deployment, run_id = self._deploy(name)
        at = self.args.outage_at
        _db_wait(lambda: _step_reached(run_id, at), timeout=120, what=f"the deploy to reach {at}")
        events_before = set(_db(lambda: list(_event_ids(run_id)), []))
        # (label, call, read-only): read-only probes are asked again once the service is back; a launch is not
        # (it would start a run beside the one measured).
        probes = {
            "redis-restart": [
                ("GET /health/broker", lambda: self.probe.get("/health/broker"), True),
                ("GET /clusters", lambda: self.probe.get("/clusters"), True),
                (
                    "POST collect-node-info",
                    lambda: self.probe.post(f"/clusters/{cluster.pk}/collect-node-info"),
                    False,
                ),
            ],
            "postgres-restart": [
                ("GET /health/db", lambda: self.probe.get("/health/db"), True),
                ("GET /clusters", lambda: self.probe.get("/clusters"), True),
            ],
            "kube-restart": [
                ("GET cluster health", lambda: self.probe.get(f"/clusters/{cluster.pk}/health"), True),
                ("GET deployment", lambda: self.probe.get(f"/deployments/{deployment.pk}"), True),
            ],
        }[name]
        answers: collections.Counter = collections.Counter()
        began = time.monotonic()
        stopped_at = timezone.now()
        stop, start, affected, until_affected, bound = self._service(name, run_id, stopped_at)
        stop()
        deadline = began + self.args.outage_seconds
        noticed = None  # seconds until the run showed the outage (None: not seen, or not observable)
        while time.monotonic() < deadline:
            tick = time.monotonic()
            for label, call, _ in probes:
                answers[(label, _answer(call))] += 1
            if noticed is None and affected():
                noticed = time.monotonic() - began
                if until_affected:
                    break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        start()
        back = timezone.now()
        outage = time.monotonic() - began
        after = {label: _answer(call) for label, call, again in probes if again}
        run = _db_wait(lambda: _terminal(run_id), timeout=600, what=f"run {run_id} to finish")
        first = _db(
            lambda: _first_event_after(run_id, back, exclude_status=("failpoint",)), None
        )  # the run's next sign of life
        resume = (first.created_at - back).total_seconds() if first else None
        finish = (run.finished_at - back).total_seconds() if run.finished_at else None
        lost = len(events_before - set(_event_ids(run_id)))
        deployment.refresh_from_db()
        objects = _namespace_duplicates(deployment)
        revisions = _extra_revisions(
            Revision.objects.filter(
                release__cluster=deployment.cluster, release__namespace=deployment.namespace
            )
        )
        events = sum(
            max(0, n - 1)
            for n in collections.Counter(
                run.events.filter(status="succeeded").values_list("step", flat=True)
            ).values()
        )
        step = _db(lambda: run.steps.filter(status="succeeded").order_by("-order").first(), None)
        # How the run got going again: the reaper (a "resumed" event since the outage began) or its own messages.
        reaped = run.events.filter(status="resumed", created_at__gte=stopped_at).count()
        attempts = max(run.steps.values_list("attempt", flat=True))
        self.outage_rows.append(
            {
                "scenario": name, "at": at, "outage": outage, "noticed": noticed, "status": run.status,
                "resume": resume, "finish": finish, "bound": bound, "objects": objects, "revisions": revisions,
                "events": events, "lost": lost, "answers": answers, "after": after, "deployment": deployment.status,
                "error": run.error[:300], "last_step": step.name if step else "", "reaped": reaped,
                "attempts": attempts,
                "beat": "alive" if self.beat.poll() is None else f"exited {self.beat.returncode}",
                "worker": "alive" if self.session.proc.poll() is None else f"exited {self.session.proc.returncode}",
            }
        )  # fmt: skip
        print(f"{name}: {run.status}; outage {outage:.1f} s; finished {finish or 0:.1f} s after", flush=True)
        # Free the devices for the next scenario (plain delete; its outcome is noted, not measured).
        if Cluster.objects.filter(pk=cluster.pk, status="available").exists():
            response = self.api.delete(f"/deployments/{deployment.pk}")
            if response.status_code == 202:
                deleted = _finished(response.json()["run_id"], 300)
                if deleted.status != "succeeded":
                    self.notes.append(
                        f"{name}: deleting its deployment {deleted.status}: {deleted.error[:200]}"
                    )

    def _service(self, name: str, run_id, since):
        """(stop, start, affected, whether the outage ends once affected, documented resume bound in seconds)."""
        settings = self.settings
        stale_bound = float(settings.WORKFLOW_STALE_AFTER) + REAPER_PERIOD
        if name == "redis-restart":
            broker = self.services[1]
            # Quiet for as long as the reaper waits before it resumes a run: its attempt falls in the outage too.
            quiet = float(settings.WORKFLOW_STALE_AFTER) + 1
            return (
                broker.stop,
                broker.start,
                lambda: _db(lambda: _quiet_for(run_id, quiet), False),
                True,
                stale_bound,
            )
        if name == "postgres-restart":
            pg = self.services[0]
            return pg.stop, pg.start, lambda: False, False, stale_bound  # nothing to observe it with

        def stop_kube() -> None:
            self._kube_before = (_port(self.dc.url), self.dc.ca_pem, self.dc.token(REGISTERED))
            self.dc.stop()

        def start_kube() -> None:
            self.dc = self._restart_devcluster(self._kube_before[0])
            port, ca, token = self._kube_before
            same = (_port(self.dc.url) == port, self.dc.ca_pem == ca, self.dc.token(REGISTERED) == token)
            self.notes.append(
                "kube-restart: the API server came back with the same port/CA/token: "
                + "/".join("yes" if s else "NO" for s in same)
            )

        def unreachable() -> bool:
            return _db(lambda: _transient_failure_since(run_id, since), False)

        # Down for the whole --outage-seconds: a poll step notices at once, the point is to see it ride it out.
        return stop_kube, start_kube, unreachable, False, float(settings.WORKFLOW_RETRY_MAX_DELAY)

    def _restart_devcluster(self, port: int):
        """The same API server again: a harness that supports restarts serves again from the same object (port,
        PKI, tokens, objects); an older one only gets a new server on the same port (a new CA and no objects)."""
        from devcluster.harness import DevCluster

        if hasattr(DevCluster, "restart"):
            return self.dc.start()
        self.notes.append(
            "kube-restart: devcluster.harness.DevCluster cannot restart: a new API server on the same port has a "
            "new CA, new tokens and no objects, so the registered cluster's kubeconfig no longer works"
        )
        return self._devcluster(port=port)


# --- database helpers (robust to the database going away) -----------------------------------------------------------


def _db(fn, default):
    """``fn()``, or ``default`` when the database cannot answer (its connection is dropped for the next call)."""
    from django.db import Error, connection

    try:
        return fn()
    except Error:
        connection.close()
        return default


def _db_wait(fn, *, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = _db(fn, None)
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _finished(run_id, timeout: float):
    return _db_wait(lambda: _terminal(run_id), timeout=timeout, what=f"run {run_id} to finish")


def _terminal(run_id):
    from core.choices import RunStatus
    from core.models import Run

    run = Run.objects.get(pk=run_id)
    return run if run.status in RunStatus.terminal() else None


def _step_reached(run_id, name: str) -> bool:
    from core.models import Run, RunStep

    step = RunStep.objects.get(run_id=run_id, name=name)
    if step.status in ("running", "waiting", "succeeded"):
        return True
    run = Run.objects.get(pk=run_id)
    if run.status not in ("pending", "running"):
        raise RuntimeError(f"the deploy ended ({run.status}) before {name}: {run.error[:300]}")
    return False


def _event_ids(run_id):
    from core.models import RunEvent

    return RunEvent.objects.filter(run_id=run_id).values_list("id", flat=True)


def _first_event_after(run_id, moment, exclude_status=()):
    from core.models import RunEvent

    return (
        RunEvent.objects.filter(run_id=run_id, created_at__gt=moment)
        .exclude(status__in=exclude_status)
        .order_by("created_at", "id")
        .first()
    )


def _quiet_for(run_id, seconds: float) -> bool:
    """No event and no heartbeat from the run for ``seconds``: its messages are not getting through."""
    from datetime import timedelta

    from django.utils import timezone

    from core.models import Run, RunEvent

    run = Run.objects.get(pk=run_id)
    if run.status not in ("pending", "running"):
        return True
    last = RunEvent.objects.filter(run_id=run_id).order_by("-created_at").values_list("created_at", flat=True)
    moments = [m for m in (run.heartbeat_at, last.first()) if m]
    return bool(moments) and max(moments) < timezone.now() - timedelta(seconds=seconds)


def _transient_failure_since(run_id, moment) -> bool:
    """A step of the run met a failure it will retry (the API server unreachable) since ``moment``."""
    from django.db.models import Q

    from core.models import RunStep

    return (
        RunStep.objects.filter(run_id=run_id)
        .filter(
            Q(failing_since__gte=moment)
            | Q(message__icontains="not answering")
            | Q(message__icontains="retrying")
        )
        .exists()
    )


def _answer(call) -> str:
    """``status`` and, for an error, the body's ``code`` (or the health check's reason up to its first colon).

    Each probe is a request as the server would handle it: Django's test client leaves out the request-cycle
    connection check (``close_old_connections``), so it is made here, else a connection broken by the outage
    would answer for the database long after it is back. A probe that raised is an answer too; the logs of the
    expected 503s are muted (the table has them)."""
    import logging

    from django.db import close_old_connections

    close_old_connections()
    logging.disable(logging.CRITICAL)
    try:
        response = call()
    except Exception as exc:
        return f"raised {type(exc).__name__}"
    finally:
        logging.disable(logging.NOTSET)
    code = ""
    if response.status_code >= 400:
        try:
            body = response.json()
            code = body.get("code") or body.get("reason", "").split(":")[0]
        except (ValueError, AttributeError):
            code = ""
    return f"{response.status_code} {code}".strip()


def _port(url: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port


# --- duplicates ---------------------------------------------------------------------------------------------------


def _steps(kind: str) -> list[str]:
    from core.workflow import get_workflow

    return [s.name for s in get_workflow(kind).steps]


def _extra_revisions(revisions, expected: dict | None = None) -> int:
    """Revisions beyond the expected count per release (one when the release is not in ``expected``)."""
    counts = collections.Counter(revisions.values_list("release_id", flat=True))
    return sum(max(0, n - (expected or {}).get(release, 1)) for release, n in counts.items())


def _namespace_duplicates(deployment) -> int:
    """Objects beyond one of each kind in the deployment's namespace (ReplicaSets: those with replicas; a new
    revision's rollout leaves the old ones at 0)."""
    from clusters.services import gateway_for

    extra = 0
    with gateway_for(deployment.cluster) as gw:
        for kind, api_version in NAMESPACED:
            found = gw.list(api_version, kind, deployment.namespace)
            if kind == "ReplicaSet":
                found = [o for o in found if (o.get("spec") or {}).get("replicas")]
            extra += max(0, len(found) - 1)
    return extra


def _terraform_events(run, step: str, action: str):
    return run.events.filter(step=step, status="complete", data__source="terraform", data__action=action)


def _terraform_repeats(run, step: str, action: str) -> int:
    """Resources the run's ``step`` created (or destroyed) more than once."""
    counts = collections.Counter(e.data.get("address") for e in _terraform_events(run, step, action))
    return sum(n - 1 for n in counts.values())


def _runs_of(subject, kind: str) -> int:
    from core.models import Run

    return Run.objects.filter(kind=kind, subject_id=str(subject.pk)).count()


def _schema_exists(name: str) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [name])
        return cursor.fetchone() is not None


def _drop_terraform_states() -> None:
    """Schemas of the pg backend left by an earlier, interrupted matrix in this database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'tf\\_cluster\\_%%'"
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP SCHEMA "{name}" CASCADE')


# --- report -----------------------------------------------------------------------------------------------------


def _print(rows: list[tuple], notes: list[str], outages: list[dict]) -> None:
    if rows:
        print()
        print(f"{'workflow':<19} {'step':<22} {'terminal':<10} {'resume s':>9}  dup objects/revisions/events")
        for name, step, status, seconds, objects, revisions, events, killed in rows:
            resume = (
                f"{seconds:9.1f}" if seconds is not None else ("  no kill" if not killed else "        -")
            )
            print(f"{name:<19} {step:<22} {status:<10} {resume}  {objects}/{revisions}/{events}")
        resumes = [r[3] for r in rows if r[3] is not None]
        failed = {r[0] for r in rows if r[2] != "succeeded"}
        if resumes:
            print(
                f"\nkill points: {len(rows)}; resumed: {len(resumes)}; resume s min {min(resumes):.1f} "
                f"median {sorted(resumes)[len(resumes) // 2]:.1f} max {max(resumes):.1f}; "
                f"runs not succeeded: {len(failed)}{' (' + ', '.join(sorted(failed)) + ')' if failed else ''}; "
                f"duplicates: {sum(r[4] + r[5] + r[6] for r in rows)}"
            )
    if notes:
        print()
        for note in notes:
            print(note)
    if outages:
        print()
        print(
            f"{'scenario':<17} {'at step':<14} {'outage s':>8} {'noticed s':>9}  {'terminal':<10} {'resume s':>8} "
            f"{'finish s':>8} {'bound s':>7}  dup o/r/e  lost"
        )
        for o in outages:
            resume = f"{o['resume']:8.1f}" if o["resume"] is not None else "       -"
            finish = f"{o['finish']:8.1f}" if o["finish"] is not None else "       -"
            within = "" if o["resume"] is None or o["resume"] <= o["bound"] else " OVER"
            noticed = f"{o['noticed']:9.1f}" if o["noticed"] is not None else "        -"
            print(
                f"{o['scenario']:<17} {o['at']:<14} {o['outage']:8.1f} {noticed}  {o['status']:<10} {resume} {finish} "
                f"{o['bound']:7.0f}{within}  {o['objects']}/{o['revisions']}/{o['events']}      {o['lost']}"
            )
        for o in outages:
            meanwhile = ", ".join(
                f"{label} {answer} x{n}" for (label, answer), n in sorted(o["answers"].items())
            )
            after = ", ".join(f"{label} {answer}" for label, answer in o["after"].items())
            broken = sum(n for (_, answer), n in o["answers"].items() if answer[:3] in ("500", "rai"))
            print(
                f"\n{o['scenario']}: API while down: {meanwhile or 'no probe ran'}"
                f" ({broken} answers were 500s or exceptions)"
            )
            print(f"{o['scenario']}: API once back: {after}")
            print(
                f"{o['scenario']}: deployment {o['deployment']}; last step done {o['last_step'] or '-'}; "
                f"resumed by the reaper {o['reaped']}x; most attempts of a step {o['attempts']}; "
                f"beat {o['beat']}; session worker {o['worker']}"
                + (f"; error: {o['error']}" if o["error"] else "")
            )


if __name__ == "__main__":
    main()
