"""REST API under load: list and detail endpoints at fleet scale, served by gunicorn as in production.

The fleet (2,000 clusters, 20,000 nodes, 10,000 runs, 2,000 deployments by default) is written with
``bulk_create`` into this script's own database; re-runs reuse it when the counts match. The web server is
``scripts/entrypoint.sh web``, the image's own command line (gunicorn, ``WEB_CONCURRENCY`` workers, access log on),
bound to loopback; extra gunicorn arguments can be given with ``--gunicorn-args``.

The clients are coroutines on one asyncio loop (aiohttp; at most ``--clients`` requests in flight; connections are
kept alive where the server allows it, and gunicorn's sync workers close each one after its answer): each one
sends its next request when the previous one is answered, round-robin over

  GET /clusters, /clusters/{id}, /clusters/{id}/nodes, /runs, /runs/{id}, /deployments, /deployments/{id}

with random ids and the default page size. Each client authenticates with its own token of a user who holds the
view permissions through a group (not a superuser: the permission checks are part of what is measured), so the
per-user request throttle (``API_THROTTLE_USER_RATE``) stays as configured.

Printed, measured in the same run against the same gunicorn and the same clients:
  * the baseline: ``GET /health`` (no database, no authentication): requests/s, p50, p99;
  * per concurrency (``--clients 50,200``): requests/s, p50/p99 of all requests and per endpoint, errors
    (status other than 200, or no answer), and the ratio to the baseline;
  * for both, the CPU seconds gunicorn (master and workers, from /proc), the client and the rest of the machine
    (PostgreSQL, mostly: ``/proc/stat`` less the other two) spent per request, and how busy the cores were: the
    figure a busy machine moves least, and the rate the server could reach with the cores to itself;
  * each endpoint's own time split by layer (``LAYERS``: database round trips, ORM, authentication, permissions,
    filters and pagination, serializers, rendering, and the framework's rest), in process;
  * queries per request of each endpoint at page sizes 10, 50 and 200 (Django's test client in this process,
    the same settings): a count that grows with the page size is an N+1; and each endpoint's cost in process;
  * with ``--profile N``: the functions where N requests spend their time (cProfile, in-process WSGI handler).

The client runs on the same machine as the server and takes some of its CPU; so does the baseline. On a shared
machine compare the endpoint figures with the baseline of the same run, not with another run's.

Usage: DATABASE_URL=postgresql://postgres@127.0.0.1:5432/budcluster_bench_api python benchmarks/api_load.py
       [--clients 50,200] [--duration 30] [--workers 2] [--gunicorn-args "--threads 4"] [--profile 2000]
       [--clusters 2000 --nodes-per-cluster 10 --runs 10000] [--reseed]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import group_cpu_seconds, stop_group  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_api")
os.environ.setdefault("LOG_LEVEL", "WARNING")

GROUP = "api-load-readers"
USER_PREFIX = "api-load-"
VIEW_PERMISSIONS = (
    ("clusters", "view_cluster"),
    ("hardware", "view_node"),
    ("core", "view_run"),
    ("deployments", "view_deployment"),
)
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://10.0.0.1:6443", certificate-authority-data: "AAAA"}
users:
- name: u
  user: {token: "bench-token-not-a-secret"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
"""


# --- the fleet ------------------------------------------------------------------------------------------------


def seed(clusters: int, nodes_per_cluster: int, runs: int, reseed: bool) -> dict[str, list]:
    """Write the fleet (unless it is already there) and return the ids the clients pick from."""
    from django.contrib.contenttypes.models import ContentType

    from clusters.models import Cluster, Release
    from core.models import Run
    from deployments.models import Deployment
    from hardware.models import Node

    want_nodes = clusters * nodes_per_cluster
    fresh = (
        Cluster.objects.count() == clusters
        and Node.objects.count() == want_nodes
        and Run.objects.count() == runs
        and Deployment.objects.count() == clusters
    )
    if reseed or not fresh:
        started = time.monotonic()
        Run.objects.all().delete()
        Deployment.objects.all().delete()
        Cluster.objects.all().delete()  # cascades to nodes, releases
        statuses = ["available"] * 8 + ["not_available", "error"]
        rows = Cluster.objects.bulk_create(
            (
                Cluster(
                    name=f"cluster-{i:05d}",
                    server_url=f"https://10.{i // 65536}.{i // 256 % 256}.{i % 256}:6443",
                    status=statuses[i % len(statuses)],
                    kubeconfig=KUBECONFIG,
                    kubernetes_version="v1.31.2",
                    labels={"env": "prod" if i % 3 else "dev", "region": f"r{i % 5}"},
                )
                for i in range(clusters)
            ),
            batch_size=1000,
        )
        gpus = (
            ("cuda", "NVIDIA", "NVIDIA-H100-80GB-HBM3", 81559),
            ("rocm", "AMD", "AMD-Instinct-MI300X", 196608),
        )
        nodes = []
        for ci, cluster in enumerate(rows):
            for n in range(nodes_per_cluster):
                gpu = gpus[ci % 2] if n % 2 == 0 else None
                nodes.append(
                    Node(
                        cluster=cluster,
                        name=f"node-{n:03d}",
                        ready=n != 7,
                        schedulable=True,
                        internal_ip=f"10.1.{ci % 250}.{n}",
                        roles=["worker"],
                        cpu_vendor="GenuineIntel",
                        cpu_model="Intel(R) Xeon(R) Platinum 8480+",
                        cpu_cores=96,
                        cpu_threads=192,
                        cpu_flags=["avx2", "avx512f", "amx_bf16"],
                        memory_bytes=1024**4,
                        accelerator_type=gpu[0] if gpu else "cpu",
                        accelerator_vendor=gpu[1] if gpu else "",
                        accelerator_model=gpu[2] if gpu else None,
                        accelerator_count=8 if gpu else 0,
                        accelerator_memory_mib=gpu[3] if gpu else None,
                        free_accelerators=4 if gpu else 0,
                        free_cpu_millicores=90000,
                        free_memory_bytes=900 * 1024**3,
                        allocatable={"cpu_millicores": 95000, "memory_bytes": 1024**4},
                    )
                )
        Node.objects.bulk_create(nodes, batch_size=2000)
        releases = Release.objects.bulk_create(
            (
                Release(
                    cluster=c,
                    name=f"d{i}",
                    namespace=f"bud-d{i}-{i:08x}",
                    chart="bud_runtime_container",
                    status="deployed",
                    current_revision=1 + i % 3,
                )
                for i, c in enumerate(rows)
            ),
            batch_size=1000,
        )
        deployments = Deployment.objects.bulk_create(
            (
                Deployment(
                    name=f"d{i}",
                    cluster=c,
                    namespace=r.namespace,
                    model_name="llama-3.1-8b-instruct",
                    status="running",
                    release=r,
                    replicas=2,
                    ready_replicas=2,
                    engine_args=["--max-num-seqs=64"],
                    endpoint_url=f"http://10.2.{i // 256 % 256}.{i % 256}",
                )
                for i, (c, r) in enumerate(zip(rows, releases, strict=True))
            ),
            batch_size=1000,
        )
        cluster_type = ContentType.objects.get_for_model(Cluster)
        deployment_type = ContentType.objects.get_for_model(Deployment)
        kinds = (
            ("cluster.register", cluster_type, rows),
            ("deployment.deploy", deployment_type, deployments),
        )
        Run.objects.bulk_create(
            (
                Run(
                    id=uuid.uuid4(),
                    kind=kinds[i % 2][0],
                    title=f"run {i}",
                    subject_type=kinds[i % 2][1],
                    subject_id=str(kinds[i % 2][2][i % clusters].pk),
                    status="succeeded",
                    progress=100.0,
                )
                for i in range(runs)
            ),
            batch_size=2000,
        )
        print(
            f"seeded {clusters} clusters, {len(nodes)} nodes, {len(deployments)} deployments, {runs} runs "
            f"in {time.monotonic() - started:.1f}s"
        )
    else:
        print(
            f"reusing the fleet: {clusters} clusters, {want_nodes} nodes, {clusters} deployments, {runs} runs"
        )
    return {
        "clusters": list(Cluster.objects.values_list("pk", flat=True)),
        "runs": [str(pk) for pk in Run.objects.values_list("pk", flat=True)],
        "deployments": list(Deployment.objects.values_list("pk", flat=True)),
    }


def tokens(count: int) -> list[str]:
    """``count`` API keys, one per client, of users holding only the view permissions (through a group)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from knox.models import AuthToken

    from core.tokens import create_token

    group, _ = Group.objects.get_or_create(name=GROUP)
    for app_label, codename in VIEW_PERMISSIONS:
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    User = get_user_model()
    keys = []
    for i in range(count):
        user, _ = User.objects.get_or_create(username=f"{USER_PREFIX}{i:03d}")
        user.groups.add(group)
        AuthToken.objects.filter(user=user).delete()
        keys.append(create_token(user, days=1)[1])
    return keys


# --- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(workers: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """``scripts/entrypoint.sh web`` (the image's command), its access log discarded, on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        ["sh", str(ROOT / "scripts" / "entrypoint.sh"), "web", *extra],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/health/db", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_group(proc)
    raise SystemExit("gunicorn did not answer /health/db within 60 s")


def machine_cpu() -> float:
    """CPU seconds every process on this machine has used so far (``/proc/stat``: all but idle and I/O wait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- the clients ----------------------------------------------------------------------------------------------


def endpoint_paths(ids: dict[str, list], rng: random.Random) -> list[tuple[str, object]]:
    """(label, path maker) in the order each client cycles through them."""
    return [
        ("GET /clusters", lambda: "/clusters"),
        ("GET /clusters/{id}", lambda: f"/clusters/{rng.choice(ids['clusters'])}"),
        ("GET /clusters/{id}/nodes", lambda: f"/clusters/{rng.choice(ids['clusters'])}/nodes"),
        ("GET /runs", lambda: "/runs"),
        ("GET /runs/{id}", lambda: f"/runs/{rng.choice(ids['runs'])}"),
        ("GET /deployments", lambda: "/deployments"),
        ("GET /deployments/{id}", lambda: f"/deployments/{rng.choice(ids['deployments'])}"),
    ]


async def _load(base: str, keys: list[str], clients: int, duration: float, plan) -> dict:
    import aiohttp

    samples: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    examples: dict[str, str] = {}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        stop_at = time.perf_counter() + duration

        async def client(n: int) -> None:
            headers = {"Authorization": f"Token {keys[n % len(keys)]}"} if keys else {}
            i = n  # clients start at different endpoints
            while time.perf_counter() < stop_at:
                label, make = plan[i % len(plan)]
                i += 1
                started = time.perf_counter()
                try:
                    async with session.get(make(), headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                        why = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, why = False, type(exc).__name__
                elapsed = time.perf_counter() - started
                if ok:
                    samples[label].append(elapsed)
                else:
                    errors[label] += 1
                    examples.setdefault(label, why)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        wall = time.perf_counter() - started
    return {"samples": samples, "errors": errors, "examples": examples, "wall": wall}


def load(server: subprocess.Popen, base: str, keys: list[str], clients: int, duration: float, plan) -> dict:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    server_before, client_before, machine_before = (
        group_cpu_seconds(server.pid),
        time.process_time(),
        machine_cpu(),
    )
    result = run(_load(base, keys, clients, duration, plan))
    result["server_cpu"] = group_cpu_seconds(server.pid) - server_before
    result["client_cpu"] = time.process_time() - client_before
    result["machine_cpu"] = machine_cpu() - machine_before
    return result


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000 if ordered else 0.0


def report(title: str, result: dict, baseline_rate: float | None) -> float:
    everything = [s for values in result["samples"].values() for s in values]
    done = len(everything) + sum(result["errors"].values())
    rate = done / result["wall"]
    ratio = f"  ({rate / baseline_rate:.0%} of the baseline)" if baseline_rate else ""
    print(
        f"{title}: {rate:7.1f} requests/s{ratio}, p50 {pct(everything, 0.5):6.1f} ms, "
        f"p99 {pct(everything, 0.99):6.1f} ms, errors {sum(result['errors'].values())} of {done}"
    )
    if done:
        # CPU per request is what a busy machine moves least; 2 cores / server CPU is the rate this server could
        # reach with the cores to itself (no client, no PostgreSQL, no other load).
        server, client = result["server_cpu"] / done * 1000, result["client_cpu"] / done * 1000
        # The rest of the machine's CPU in the same time: PostgreSQL's backends, mostly, on an otherwise quiet
        # machine (measured machine-wide: a backend's own counters vanish with it when it exits).
        rest = max(0.0, result["machine_cpu"] - result["server_cpu"] - result["client_cpu"]) / done * 1000
        cores = os.cpu_count() or 1
        busy = result["machine_cpu"] / (cores * result["wall"])
        print(
            f"    CPU per request: gunicorn {server:.2f} ms, client {client:.2f} ms, the rest of the machine "
            f"(PostgreSQL, Redis, the kernel) {rest:.2f} ms; the {cores} cores {busy:.0%} busy "
            f"(gunicorn alone on {cores} cores: {cores / (server / 1000):.0f} requests/s at most; "
            f"all of it: {cores / ((server + client + rest) / 1000):.0f})"
        )
    if len(result["samples"]) > 1 or result["errors"]:
        for label in sorted(set(result["samples"]) | set(result["errors"])):
            values = result["samples"].get(label, [])
            wrong = result["errors"].get(label, 0)
            extra = f", errors {wrong} ({result['examples'][label]})" if wrong else ""
            print(
                f"    {label:26s} {len(values) / result['wall']:7.1f}/s  p50 {pct(values, 0.5):6.1f} ms  "
                f"p99 {pct(values, 0.99):6.1f} ms{extra}"
            )
    return rate


# --- queries per request and the profile (in process) ---------------------------------------------------------


def query_counts(ids: dict[str, list], key: str, repeat: int = 40) -> None:
    """Queries per request at three page sizes, and each endpoint's cost in this process (one request at a time,
    Django's test client: the fastest and the median wall time, and this process's CPU time per request)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    rng = random.Random(3)

    def cost(make) -> str:
        client.get(make())
        times = []
        cpu = time.process_time()
        for _ in range(repeat):
            started = time.perf_counter()
            client.get(make())
            times.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
        # The fastest of the repeats is the figure least moved by other processes on a busy machine.
        return (
            f"{min(times) * 1000:6.2f} ms fastest, {statistics.median(times) * 1000:6.2f} ms median, "
            f"{cpu / repeat * 1000:6.2f} ms CPU"
        )

    print("queries per request (page size 10 / 50 / 200), and cost per request in process (default page):")
    print(f"    GET /health                                   {cost(lambda: '/health')}")
    for label, make in endpoint_paths(ids, rng):
        if label.endswith("{id}"):
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(make()).status_code == 200
            counts = str(len(ctx.captured_queries))
        else:
            counts = []
            for limit in (10, 50, 200):
                with CaptureQueriesContext(connection) as ctx:
                    assert client.get(f"{make()}?limit={limit}").status_code == 200
                counts.append(len(ctx.captured_queries))
            counts = " / ".join(map(str, counts))
        print(f"    {label:26s} {counts:>12s} queries   {cost(make)}")


# Where a request's time goes, by layer: the entry points of each layer are wrapped with a timer in this process,
# and each layer is charged its own time (what it spent minus the time of the layers it called: an ORM query's time
# less its database round trip). What no timer covers is the framework: middleware, URL routing, DRF's dispatch and
# the test client. Timers rather than a sampling profiler (py-spy) or cProfile: cProfile multiplies the cost of
# pure-Python code several times over that of C and I/O, and a sampler in this process over-counts the database
# waits (it gets the interpreter lock at once only while the request thread waits on a socket).
LAYERS = (
    "PostgreSQL round trips",
    "ORM: SQL and rows to objects",
    "token authentication",
    "permissions, throttles",
    "filters, pagination",
    "serializers",
    "JSON rendering",
)
OTHER = "framework"


class _Timers:
    """Own time per layer; entries nest (a stack of [layer, started, time of the layers called])."""

    def __init__(self) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []

    def wrap(self, layer: str, func):
        import functools

        timers = self

        @functools.wraps(func)
        def timed(*args, **kwargs):
            timers.stack.append([layer, time.perf_counter(), 0.0])
            try:
                return func(*args, **kwargs)
            finally:
                _, started, inner = timers.stack.pop()
                spent = time.perf_counter() - started
                timers.own[layer] += spent - inner
                if timers.stack:
                    timers.stack[-1][2] += spent

        return timed

    def install(self) -> list:
        """Wrap every layer's entry points; returns what to put back."""
        from django.db import connections
        from django.db.models import query as orm_query
        from django.db.models.sql import query as sql_query
        from rest_framework import generics, renderers, serializers, views

        from core import tokens

        undo = []

        def patch(owner, name: str, layer: str, *, prop: bool = False) -> None:
            original = owner.__dict__[name]
            undo.append((owner, name, original))
            if prop:
                setattr(owner, name, property(self.wrap(layer, original.fget)))
            else:
                setattr(owner, name, self.wrap(layer, original))

        connection = connections["default"]
        patch(type(connection), "is_usable", LAYERS[0])  # CONN_HEALTH_CHECKS' SELECT 1
        patch(orm_query.QuerySet, "_fetch_all", LAYERS[1])
        patch(sql_query.Query, "get_count", LAYERS[1])
        patch(tokens.TokenAuthentication, "authenticate", LAYERS[2])
        patch(views.APIView, "check_permissions", LAYERS[3])
        patch(views.APIView, "check_throttles", LAYERS[3])
        patch(generics.GenericAPIView, "filter_queryset", LAYERS[4])
        patch(generics.GenericAPIView, "paginate_queryset", LAYERS[4])
        patch(serializers.Serializer, "data", LAYERS[5], prop=True)
        patch(serializers.ListSerializer, "data", LAYERS[5], prop=True)
        patch(renderers.JSONRenderer, "render", LAYERS[6])
        timed_execute = self.wrap(LAYERS[0], lambda execute, *args: execute(*args))
        connection.execute_wrappers.append(timed_execute)
        undo.append((connection.execute_wrappers, None, timed_execute))
        return undo

    @staticmethod
    def uninstall(undo: list) -> None:
        for owner, name, original in reversed(undo):
            if name is None:
                owner.remove(original)
            else:
                setattr(owner, name, original)


def layers(ids: dict[str, list], keys: list[str], requests: int) -> None:
    """Per endpoint, the ms per request each layer (``LAYERS``) spent in this process, with the framework's rest."""
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="localhost")
    headers = [{"HTTP_AUTHORIZATION": f"Token {key}"} for key in keys]
    plan = endpoint_paths(ids, random.Random(5))
    names = [*LAYERS, OTHER]
    print(f"where the time goes: ms per request in each layer ({requests} requests per endpoint, in process)")
    print("    " + " | ".join(f"{i + 1}: {name}" for i, name in enumerate(names)))
    print(f"    {'':26s} {'total':>6s}  " + "  ".join(f"{i + 1:>5d}" for i in range(len(names))))
    timers = _Timers()
    undo = timers.install()
    try:
        for label, make in plan:
            for i in range(5):
                client.get(make(), **headers[i % len(headers)])
            timers.own.clear()
            started = time.perf_counter()
            for i in range(requests):
                answer = client.get(make(), **headers[i % len(headers)])
                assert answer.status_code == 200, answer.status_code
            total = (time.perf_counter() - started) * 1000 / requests
            own = {name: timers.own[name] * 1000 / requests for name in LAYERS}
            own[OTHER] = total - sum(own.values())
            print(f"    {label:26s} {total:6.2f}  " + "  ".join(f"{own[name]:5.2f}" for name in names))
    finally:
        timers.uninstall(undo)


def profile(ids: dict[str, list], keys: list[str], requests: int, top: int = 30) -> None:
    """cProfile of ``requests`` requests through Django's WSGI handler in this process (no gunicorn, no client),
    spread over the users' tokens like the load is, so the per-user throttle does not answer 429."""
    import cProfile
    import io
    import pstats

    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="localhost")
    headers = [{"HTTP_AUTHORIZATION": f"Token {key}"} for key in keys]
    rng = random.Random(1)
    plan = endpoint_paths(ids, rng)
    for _label, make in plan:  # warm up (imports, URL resolver, first connection)
        client.get(make(), **headers[0])
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for i in range(requests):
        answer = client.get(plan[i % len(plan)][1](), **headers[i % len(headers)])
        assert answer.status_code == 200, answer.status_code
    profiler.disable()
    wall = time.perf_counter() - started
    print(f"profile: {requests} requests in process, {wall / requests * 1000:.2f} ms each (under cProfile)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    print("--- by tottime ---")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


# --- main -----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="50,200", help="comma-separated concurrencies")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--gunicorn-args", default="", help="more gunicorn arguments, e.g. '--threads 4'")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--nodes-per-cluster", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N requests in process")
    parser.add_argument(
        "--layers",
        type=int,
        default=200,
        metavar="N",
        help="requests per endpoint for the layer table (0: none)",
    )
    parser.add_argument("--no-load", action="store_true", help="only seed, count queries (and profile)")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.clients.split(",") if c.strip()]

    from benchmarks.common import setup_django

    setup_django()
    ids = seed(args.clusters, args.nodes_per_cluster, args.runs, args.reseed)
    keys = tokens(max(concurrencies, default=1))
    query_counts(ids, keys[0])
    if args.layers:
        layers(ids, keys, args.layers)
    if args.profile:
        profile(ids, keys, args.profile)
    if args.no_load:
        return 0

    from django.db import connections

    connections.close_all()
    extra = shlex.split(args.gunicorn_args)
    proc, base = start_gunicorn(args.workers, extra)
    print(
        f"gunicorn: scripts/entrypoint.sh web, WEB_CONCURRENCY={args.workers} {' '.join(extra)}".rstrip()
        + f"; {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    failed = False
    try:
        rng = random.Random(7)
        plan = endpoint_paths(ids, rng)
        load(proc, base, keys, 10, 3.0, plan)  # warm up: connections, imports, caches in every worker
        for clients in concurrencies:
            health = load(
                proc, base, [], clients, min(args.duration, 10.0), [("GET /health", lambda: "/health")]
            )
            baseline = report(f"baseline GET /health, {clients:3d} clients", health, None)
            result = load(proc, base, keys, clients, args.duration, plan)
            report(f"endpoints, {clients:3d} clients for {args.duration:.0f}s", result, baseline)
            failed |= bool(sum(result["errors"].values()))
    finally:
        stop_group(proc)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
