"""GET /metrics: the Prometheus exposition parses, its figures are the database's, it refuses whoever the settings
do not admit, and a scrape costs the same number of queries for 10 clusters as for 100."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from clusters.models import Cluster
from core.models import Run, RunStep
from deployments.models import Deployment
from hardware.models import Node
from metrics import sweeps
from metrics.models import SweepTiming
from tests.worker import wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-0123456789abcdef"
KUBECONFIG_SECRET = "kubeconfig-secret-do-not-leak"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    return TOKEN


def scrape(client, token: str = TOKEN, **extra) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser: {(name, labels): value}."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def _cluster(name: str, status: str = "available") -> Cluster:
    return Cluster.objects.create(name=name, status=status, kubeconfig=KUBECONFIG_SECRET)


def _node(cluster, name, *, ready=True, type="cuda", model="NVIDIA-A100-SXM4-80GB", count=8, free=8) -> Node:
    return Node.objects.create(
        cluster=cluster,
        name=name,
        ready=ready,
        accelerator_type=type,
        accelerator_model=model,
        accelerator_count=count,
        free_accelerators=free,
    )


def _deployment(cluster, name, status) -> Deployment:
    return Deployment.objects.create(
        cluster=cluster, name=name, namespace=f"bud-{name}", model_name="llama", status=status
    )


def _run(kind: str, status: str, *, started=True, steps=()) -> Run:
    now = timezone.now()
    run = Run.objects.create(
        kind=kind,
        status=status,
        started_at=now - timedelta(hours=3) if started else None,
        finished_at=now if status in ("succeeded", "failed", "cancelled") else None,
    )
    for order, (name, status_, seconds) in enumerate(steps):
        begun = now - timedelta(hours=2)
        RunStep.objects.create(
            run=run,
            order=order,
            name=name,
            title=name,
            status=status_,
            started_at=begun if seconds is not None else None,
            finished_at=begun + timedelta(seconds=seconds) if seconds is not None else None,
        )
    return run


@pytest.fixture
def fleet(db):
    a100 = _cluster("gpu-east")
    mi300 = _cluster("gpu-west", "not_available")
    _cluster("new-one", "registering")
    _node(a100, "a1", free=3)
    _node(a100, "a2", ready=False, free=8)
    _node(a100, "cpu1", type="cpu", model=None, count=0, free=0)
    _node(mi300, "m1", type="rocm", model="AMD-Instinct-MI300X", count=8, free=0)
    _node(mi300, "h1", type="hpu", model=None, count=8, free=2)  # a model the labellers did not name
    _deployment(a100, "llama-a", "running")
    _deployment(a100, "llama-b", "running")
    _deployment(mi300, "qwen", "failed")
    _deployment(mi300, "gone", "deleted")
    _run(
        "cluster.register",
        "succeeded",
        steps=[("verify", "succeeded", 0.3), ("collect", "succeeded", 4.0), ("setup", "succeeded", 100.0)],
    )
    _run("cluster.register", "failed", steps=[("verify", "failed", 2.0), ("collect", "skipped", None)])
    _run("deployment.deploy", "running", steps=[("transfer", "running", None)])
    _run("deployment.deploy", "cancelled", started=False)
    return {"a100": a100, "mi300": mi300}


# --- values ---------------------------------------------------------------------------------------------------


def test_fleet_figures_are_the_databases(client, token, fleet):
    s = scrape(client)
    assert value(s, "budcluster_clusters", status="available") == 1
    assert value(s, "budcluster_clusters", status="not_available") == 1
    assert value(s, "budcluster_clusters", status="registering") == 1
    assert value(s, "budcluster_clusters", status="error") == 0  # every status, zeros included
    assert value(s, "budcluster_cluster_available", cluster="gpu-east") == 1
    assert value(s, "budcluster_cluster_available", cluster="gpu-west") == 0

    assert value(s, "budcluster_nodes", cluster="gpu-east") == 3
    assert value(s, "budcluster_nodes_ready", cluster="gpu-east") == 2
    assert value(s, "budcluster_nodes", cluster="new-one") == 0  # a cluster without nodes reads 0, not absent

    a100 = {"cluster": "gpu-east", "type": "cuda", "model": "NVIDIA-A100-SXM4-80GB"}
    assert value(s, "budcluster_gpus_total", **a100) == 16
    assert value(s, "budcluster_gpus_free", **a100) == 11
    mi300 = {"cluster": "gpu-west", "type": "rocm", "model": "AMD-Instinct-MI300X"}
    assert (value(s, "budcluster_gpus_total", **mi300), value(s, "budcluster_gpus_free", **mi300)) == (8, 0)
    hpu = {"cluster": "gpu-west", "type": "hpu", "model": "unknown"}
    assert (value(s, "budcluster_gpus_total", **hpu), value(s, "budcluster_gpus_free", **hpu)) == (8, 2)
    assert not any(name == "budcluster_gpus_total" and ("type", "cpu") in labels for name, labels in s)

    assert value(s, "budcluster_deployments", status="running") == 2
    assert value(s, "budcluster_deployments", status="failed") == 1
    assert value(s, "budcluster_deployments", status="pending") == 0
    assert ("budcluster_deployments", frozenset({("status", "deleted")})) not in s

    # What changes in the database shows at the next scrape: the figures are read, not cached.
    Node.objects.filter(name="a1").update(free_accelerators=0)
    Cluster.objects.filter(name="gpu-west").update(status="available")
    s = scrape(client)
    assert value(s, "budcluster_gpus_free", **a100) == 8
    assert value(s, "budcluster_clusters", status="available") == 2


def test_runs_and_step_durations_are_counted_from_their_rows(client, token, fleet):
    s = scrape(client)
    assert value(s, "budcluster_runs_started_total", kind="cluster.register") == 2
    assert value(s, "budcluster_runs_started_total", kind="deployment.deploy") == 1  # one never started
    assert value(s, "budcluster_runs_finished_total", kind="cluster.register", outcome="succeeded") == 1
    assert value(s, "budcluster_runs_finished_total", kind="cluster.register", outcome="failed") == 1
    assert value(s, "budcluster_runs_finished_total", kind="deployment.deploy", outcome="cancelled") == 1
    assert value(s, "budcluster_runs_active", kind="deployment.deploy", status="running") == 1

    verify = {"workflow": "cluster.register", "step": "verify"}
    # 0.3 s (succeeded) and 2 s (failed): both ended, both counted.
    assert value(s, "budcluster_step_duration_seconds_bucket", le="0.5", **verify) == 1
    assert value(s, "budcluster_step_duration_seconds_bucket", le="2.5", **verify) == 2
    assert value(s, "budcluster_step_duration_seconds_count", **verify) == 2
    assert value(s, "budcluster_step_duration_seconds_sum", **verify) == pytest.approx(2.3)
    # Skipped steps never ran; a running step has not ended: neither is observed.
    collect = {"workflow": "cluster.register", "step": "collect"}
    assert value(s, "budcluster_step_duration_seconds_count", **collect) == 1
    assert value(s, "budcluster_step_duration_seconds_bucket", le="2.5", **collect) == 0
    assert value(s, "budcluster_step_duration_seconds_bucket", le="5", **collect) == 1
    setup = {"workflow": "cluster.register", "step": "setup"}
    assert value(s, "budcluster_step_duration_seconds_bucket", le="60", **setup) == 0
    assert value(s, "budcluster_step_duration_seconds_bucket", le="120", **setup) == 1
    assert value(s, "budcluster_step_duration_seconds_bucket", le="+Inf", **setup) == 1
    assert not any(labels >= {("step", "transfer")} for _, labels in s)


def test_no_secret_in_any_label_or_value(client, token, fleet, settings):
    settings.CELERY_BROKER_URL = "redis://:broker-password-xyz@127.0.0.1:1/0"
    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    for secret in (KUBECONFIG_SECRET, "broker-password-xyz", TOKEN):
        assert secret not in body


# --- broker and sweeps ----------------------------------------------------------------------------------------


@pytest.fixture
def test_queues(settings):
    """Queue names of this test only: a worker of another test module never takes these messages."""
    settings.CELERY_TASK_DEFAULT_QUEUE = "metrics-test-steps"
    settings.WORKFLOW_POLL_QUEUE = "metrics-test-polls"
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    keys = ["metrics-test-steps", "metrics-test-steps\x06\x166", "metrics-test-polls"]
    client.delete(*keys)
    yield client
    client.delete(*keys)


def test_queue_depth_is_the_brokers_list_lengths(client, token, db, test_queues):
    test_queues.lpush("metrics-test-steps", "m1", "m2", "m3")
    test_queues.lpush("metrics-test-steps\x06\x166", "urgent")  # kombu's list of priority 6
    test_queues.lpush("metrics-test-polls", "check")
    s = scrape(client)
    assert value(s, "budcluster_broker_up") == 1
    assert value(s, "budcluster_queue_depth", queue="metrics-test-steps") == 4
    assert value(s, "budcluster_queue_depth", queue="metrics-test-polls") == 1
    test_queues.rpop("metrics-test-steps")
    assert value(scrape(client), "budcluster_queue_depth", queue="metrics-test-steps") == 3


def test_a_broker_that_does_not_answer_is_reported_down_and_the_rest_still_answers(
    client, token, fleet, settings, caplog
):
    settings.CELERY_BROKER_URL = "redis://:broker-password-xyz@127.0.0.1:1/0"  # nothing listens on port 1
    s = scrape(client)
    assert value(s, "budcluster_broker_up") == 0
    assert not any(name == "budcluster_queue_depth" for name, _ in s)
    assert value(s, "budcluster_clusters", status="available") == 1
    assert "broker-password-xyz" not in caplog.text


def test_health_sweep_duration_is_recorded_by_the_worker_that_ran_it(client, token, db):
    from clusters.tasks import check_clusters

    check_clusters.apply()  # the task's own Celery signals time it, as in a worker
    check_clusters.apply()
    sweeps.record("deployments", 1.5)
    s = scrape(client)
    assert value(s, "budcluster_health_sweep_duration_seconds_count", sweep="clusters") == 2
    timing = SweepTiming.objects.get(sweep="clusters")
    assert value(s, "budcluster_health_sweep_duration_seconds_sum", sweep="clusters") == pytest.approx(
        timing.sum_seconds
    )
    assert value(s, "budcluster_health_sweep_last_duration_seconds", sweep="deployments") == 1.5
    assert value(s, "budcluster_health_sweep_last_timestamp_seconds", sweep="clusters") == pytest.approx(
        timing.last_finished_at.timestamp()
    )


def test_a_real_worker_records_the_sweep_it_ran(worker, client, token):
    from clusters.tasks import check_clusters

    check_clusters.delay()
    wait_for(
        lambda: SweepTiming.objects.filter(sweep="clusters", count=1).exists(),
        what="the worker's cluster sweep to be recorded",
    )
    s = scrape(client)
    assert value(s, "budcluster_health_sweep_duration_seconds_count", sweep="clusters") == 1
    assert value(s, "budcluster_health_sweep_last_duration_seconds", sweep="clusters") > 0


# --- cost -----------------------------------------------------------------------------------------------------


def _grow_fleet(first: int, last: int) -> None:
    clusters = Cluster.objects.bulk_create(
        [Cluster(name=f"c{i:04d}", status="available") for i in range(first, last)]
    )
    Node.objects.bulk_create(
        [
            Node(cluster=c, name=f"n{j}", ready=True, accelerator_type="cuda", accelerator_model=f"gpu-{j}")
            for c in clusters
            for j in range(2)
        ]
    )
    Deployment.objects.bulk_create(
        [
            Deployment(cluster=c, name="d", namespace="bud-d", model_name="m", status="running")
            for c in clusters
        ]
    )
    for c in clusters:
        _run(f"kind-{c.pk % 7}", "succeeded", steps=[("a", "succeeded", 1.0), ("b", "failed", 30.0)])


def _scrape_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        scrape(client)
    return len(queries)


def test_a_scrape_costs_the_same_queries_for_10_and_100_clusters(client, token, db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # the broker is not a database query either way
    _grow_fleet(0, 10)
    at_10 = _scrape_queries(client)
    _grow_fleet(10, 100)
    at_100 = _scrape_queries(client)
    assert at_10 == at_100 == 8
    assert len(Cluster.objects.all()) == 100


# --- who may scrape -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_off_when_neither_token_nor_networks_is_set(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    for response in (
        client.get("/metrics"),
        client.post("/metrics"),
        client.get("/metrics", HTTP_AUTHORIZATION="Bearer x"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


@pytest.mark.django_db
def test_token_is_required_and_compared(client, token):
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.json()["code"] == "not_authenticated"
    assert missing["WWW-Authenticate"].startswith("Bearer")
    for header in (f"Bearer {TOKEN}x", f"Token {TOKEN}", "Bearer ", TOKEN):
        refused = client.get("/metrics", HTTP_AUTHORIZATION=header)
        assert refused.status_code == 401, header
        assert TOKEN not in refused.content.decode()
    api_token_holder = client.get("/metrics", HTTP_AUTHORIZATION="Token not-a-metrics-token")
    assert api_token_holder.status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.django_db
def test_network_allowlist(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "fd00::/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="fd00::5").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.9.9.9").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="192.168.1.5")
    assert refused.status_code == 403 and refused.json()["code"] == "metrics_forbidden"
    # Behind one trusted proxy the address is the proxy's view of the client, not the socket's.
    settings.TRUSTED_PROXY_COUNT = 1
    assert (
        client.get("/metrics", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    )
    assert (
        client.get("/metrics", REMOTE_ADDR="192.168.1.5", HTTP_X_FORWARDED_FOR="10.2.2.2").status_code == 200
    )


@pytest.mark.django_db
def test_token_and_networks_together_both_must_pass(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.7", **auth).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.0.7", **auth).status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.7").status_code == 401


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"METRICS_TOKEN": "tok-abc123"}, "METRICS_TOKEN must be at least 16 characters"),
        ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-network"}, "'not-a-network' is not an address"),
    ],
)
def test_bad_settings_stop_the_start_with_a_clear_message(env, complaint):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert complaint in result.stderr
    assert "tok-abc123" not in result.stderr  # a refused token is not echoed


# --- what is built on the names -------------------------------------------------------------------------------


def test_grafana_dashboard_queries_only_names_the_endpoint_exposes(client, token, fleet):
    import json
    import re

    sweeps.record("clusters", 3.0)
    exposed = {name for name, _ in scrape(client)}
    dashboard = json.loads((ROOT / "docs" / "grafana" / "budcluster.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])] + [
        v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")
    ]
    used = {name for expr in exprs for name in re.findall(r"budcluster_[a-z_]+", expr)}
    assert len(exprs) > 15 and len(used) > 10
    assert used - exposed == set()


def test_service_monitor_scrapes_with_the_token_web_checks():
    import helm_python as helm

    from tests.charts.helpers import containers, lint, one, render_objects

    secrets = {
        "django": {"name": "bc-django"},
        "database": {"name": "bc-database"},
        "broker": {"name": "bc-broker"},
        "cryptoKeys": {"name": "bc-crypto-keys"},
    }
    values = {
        "secrets": secrets,
        "serviceMonitor": {"enabled": True, "tokenSecret": {"name": "bc-metrics", "key": "token"}},
    }
    assert lint("budcluster", values) == []
    objs = render_objects("budcluster", values, release="bc", namespace="budcluster")
    endpoint = one(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    service = one(objs, "Service", "bc-budcluster")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "bc-metrics", "key": "token"},
    }
    web = containers(one(objs, "Deployment", "bc-budcluster-web"))[0]
    env = {e["name"]: e for e in web["env"]}
    assert env["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "bc-metrics", "key": "token"}
    # Prometheus sends the Service's in-cluster name as Host: one Django allows (a pod's IP is not).
    (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "__address__"]
    host, port = relabel["replacement"].rsplit(":", 1)
    assert host in env["DJANGO_ALLOWED_HOSTS"]["value"].split(",")
    assert int(port) == service["spec"]["ports"][0]["port"]

    # The token is a secret: never a plain value in `env` (the schema refuses it, naming it).
    with pytest.raises(helm.HelmError, match="METRICS_TOKEN"):
        render_objects("budcluster", {"secrets": secrets, "env": {"METRICS_TOKEN": "x" * 32}})

    without = render_objects(
        "budcluster", {"secrets": secrets, "serviceMonitor": {"enabled": True}}, release="bc", namespace="x"
    )
    assert "authorization" not in one(without, "ServiceMonitor")["spec"]["endpoints"][0]
    web = containers(one(without, "Deployment", "bc-budcluster-web"))[0]
    assert "METRICS_TOKEN" not in {e["name"] for e in web["env"]}


def test_gzip_when_the_scraper_asks_for_it(client, token, fleet):
    """Prometheus sends Accept-Encoding: gzip; the compressed answer parses to the same samples."""
    import gzip

    plain = scrape(client)
    answer = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT_ENCODING="gzip")
    assert answer.status_code == 200 and answer["Content-Encoding"] == "gzip"
    text = gzip.decompress(answer.content).decode()
    assert len(answer.content) < len(text) / 3
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    varying = {"budcluster_metrics_scrape_duration_seconds"}
    assert {k: v for k, v in samples.items() if k[0] not in varying} == {
        k: v for k, v in plain.items() if k[0] not in varying
    }


@pytest.mark.django_db
def test_webhook_deliveries_and_attempts_are_the_tables(client, token):
    from core import events
    from webhooks.models import Attempt, Delivery, Subscription

    sub = Subscription.objects.create(name="m", url="https://hooks.example.com/", secret="whsec_AAAA")
    rows = []
    for i, status in enumerate(["delivered", "delivered", "pending", "failed"]):
        event = events.emit("run.started", f"runs/{i}", {})
        rows.append(
            Delivery.objects.create(
                subscription=sub, event=event, position=i + 1, subject=event.subject, status=status
            )
        )
    for number, code in enumerate([204, 500, None, 200], start=1):
        Attempt.objects.create(
            delivery=rows[0], number=number, status_code=code, error="" if code else "timed out"
        )
    s = scrape(client)
    assert value(s, "budcluster_webhook_deliveries", status="delivered") == 2
    assert value(s, "budcluster_webhook_deliveries", status="pending") == 1
    assert value(s, "budcluster_webhook_deliveries", status="failed") == 1
    assert value(s, "budcluster_webhook_attempts_total", outcome="success") == 2
    assert value(s, "budcluster_webhook_attempts_total", outcome="failure") == 2
