"""The health sweep's probes (``core.probe`` on ``core.sweep.sweep_async``): what they keep between sweeps and what
they never skip.

Kept: decrypted kubeconfigs (keyed by their ciphertext, so a replaced kubeconfig is used at once) and connections
(reused by the next sweep, bounded, replaced when their server dropped them). Never skipped: the address guard
(a setting changed between sweeps is honoured before any kept connection is touched). How much the keeping
saves is measured by ``benchmarks/health_sweep.py``; what a hostile cluster costs by the hostile suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
import yaml

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core import probe
from core.sweep import sweep_async
from devcluster.testing import devcluster_fixture
from tests.hostile.server import HostileServer

dcp = devcluster_fixture(name="dcp", nodes="cpu-small", clusters=2, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


@pytest.fixture
def healthy():
    with HostileServer("healthy") as server:
        yield server


def _store(kubeconfig_yaml: str, name: str, status=ClusterStatus.AVAILABLE) -> Cluster:
    checked = services.validate(kubeconfig_yaml.encode())
    return Cluster.objects.create(
        name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status=status
    )


def _with_token(kubeconfig_yaml: str, token: str) -> str:
    config = yaml.safe_load(kubeconfig_yaml)
    config["users"][0]["user"]["token"] = token
    return yaml.safe_dump(config)


def test_a_replaced_kubeconfig_is_probed_with_its_new_credentials_at_once(dcp):
    """The cache is keyed by ciphertext, not by cluster: the sweep after a credential change uses the new one."""
    good = dcp.kubeconfig_yaml(dcp.names[0])
    cluster = _store(good, "rotated")
    assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == []

    cluster.kubeconfig = services.validate(_with_token(good, "revoked-token").encode()).normalized_yaml()
    cluster.save(update_fields=["kubeconfig"])
    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    assert report.transitions == [("rotated", "available", "not_available")]
    cluster.refresh_from_db()
    assert "rejected the credentials (401)" in cluster.reason
    assert "revoked-token" not in cluster.reason

    cluster.kubeconfig = services.validate(good.encode()).normalized_yaml()
    cluster.save(update_fields=["kubeconfig"])
    assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == [
        ("rotated", "not_available", "available")
    ]


def test_the_decrypted_kubeconfig_cache_is_bounded(dcp, healthy, settings):
    settings.CLUSTER_HEALTH_KUBECONFIG_CACHE = 2
    probe.targets.clear()
    clusters = [_store(dcp.kubeconfig_yaml(vc), f"cached-{vc}") for vc in dcp.names]
    clusters.append(_store(healthy.kubeconfig_yaml(), "cached-hostile"))
    report = services.sweep(timeout=5.0, cluster_ids=[c.pk for c in clusters])
    assert report.checked == 3 and report.transitions == []
    assert len(probe.targets) == 2


def test_connections_are_kept_for_the_next_sweep_and_not_when_turned_off(healthy, settings):
    cluster = _store(healthy.kubeconfig_yaml(), "kept")
    probe.close_idle_connections()
    opened = probe.pool_stats()["opened"]
    for _ in range(3):
        assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == []
    assert len(healthy.requests) == 3
    assert probe.pool_stats()["opened"] - opened == 1  # three sweeps, one TLS connection

    settings.CLUSTER_HEALTH_KEEPALIVE = 0
    for _ in range(2):
        assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == []
    assert probe.pool_stats() == {"opened": opened + 3, "idle": 0}


def test_a_connection_the_server_dropped_is_replaced_without_a_false_alarm(healthy):
    cluster = _store(healthy.kubeconfig_yaml(), "dropped")
    assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == []
    # The server ends its idle connections (an API server's idle timeout, a load balancer's restart).
    with healthy._lock:
        for conn in healthy._connections:
            with contextlib.suppress(OSError):  # the raw socket of a TLS one is detached already
                conn.shutdown(socket.SHUT_RDWR)
    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    assert report.transitions == []
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.AVAILABLE and cluster.reason == ""
    assert len(healthy.requests) == 2


def test_the_address_guard_is_asked_before_a_kept_connection_is_reused(healthy, settings):
    cluster = _store(healthy.kubeconfig_yaml(), "guarded")
    assert services.sweep(timeout=5.0, cluster_ids=[cluster.pk]).transitions == []
    assert probe.pool_stats()["idle"] >= 1

    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = False
    report = services.sweep(timeout=5.0, cluster_ids=[cluster.pk])
    assert [name for name, _ in report.refused] == ["guarded"]
    assert "BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS" in report.refused[0][1]
    assert len(healthy.requests) == 1  # nothing was sent on the kept connection


def test_an_undecryptable_kubeconfig_is_that_clusters_verdict_only(dcp):
    from django.db import connection

    from core import crypto

    broken = _store(dcp.kubeconfig_yaml(dcp.names[0]), "broken")
    fine = _store(dcp.kubeconfig_yaml(dcp.names[1]), "fine")
    # A ciphertext sealed for another column (as a swapped or tampered value is) does not open here. Written in
    # SQL: the field would take it for plaintext and encrypt it.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE clusters_cluster SET kubeconfig = %s WHERE id = %s",
            [crypto.encrypt("apiVersion: v1", context="elsewhere"), broken.pk],
        )
    report = services.sweep(timeout=5.0, cluster_ids=[broken.pk, fine.pk])
    assert report.checked == 2
    assert report.transitions == [("broken", "available", "not_available")]
    reason = Cluster.objects.values_list("reason", flat=True).get(pk=broken.pk)
    assert reason.startswith("the stored kubeconfig cannot be decrypted")


# --- the async sweep helper -----------------------------------------------------------------------------------


def test_sweep_async_keeps_order_bounds_concurrency_and_cancels_at_the_deadline():
    in_flight = {"now": 0, "most": 0}
    cancelled: list[int] = []

    async def work(item: int) -> int:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # yield to the other lanes
            if item == 3:
                raise ValueError("three")
            if item == 5:
                await asyncio.Event().wait()  # never answers
            return item * 10
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        finally:
            in_flight["now"] -= 1

    results = sweep_async(range(8), work, concurrency=3, deadline=0.5)
    assert [item for item, _ in results] == list(range(8))
    values = dict(results)
    assert [values[i] for i in (0, 1, 2, 4, 6, 7)] == [0, 10, 20, 40, 60, 70]
    assert isinstance(values[3], ValueError)
    assert isinstance(values[5], TimeoutError) and cancelled == [5]
    assert in_flight["most"] == 3
    assert sweep_async([], work) == []
