"""The hostile-cluster suite: registered clusters whose API server drips, floods, streams for ever, shows the wrong
certificate, redirects to a metadata address or stalls the TLS handshake. Each case goes through the real code
paths (``clusters.services.gateway_for``, ``check_health``, ``sweep``, the API's live health check, the collectors
wait, and the registration's verify step on a real worker) and must end with the error its documented deadline or
cap promises, in bounded memory. Timings are measured by ``benchmarks/hostile_clusters.py``, not asserted here.
"""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import pytest

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.gateway import Invalid, Unreachable
from tests.hostile.server import HostileServer
from tests.worker import run_finished

CAP = 4 * 1024 * 1024
SLOW = ("drip", "drip_headers", "endless", "stall_handshake", "slow_handshake")
LARGE = ("flood", "flood_declared", "gzip_bomb")


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    settings.GATEWAY_MAX_RESPONSE_BYTES = CAP


@pytest.fixture
def hostile():
    """``hostile(behaviour, save=...)`` → (server, cluster registered with its validated kubeconfig; stored in the
    database with ``save``); every server is closed after the test."""
    servers: list[HostileServer] = []

    def make(behaviour: str, name: str | None = None, *, save: bool = True) -> tuple[HostileServer, Cluster]:
        server = HostileServer(behaviour, interval=0.2)
        servers.append(server)
        checked = services.validate(server.kubeconfig_yaml().encode())
        cluster = Cluster(
            name=name or behaviour.replace("_", "-"),
            server_url=checked.server,
            kubeconfig=checked.normalized_yaml(),
            status=ClusterStatus.AVAILABLE,
        )
        if save:
            cluster.save()
        return server, cluster

    yield make
    for server in servers:
        server.close()


# --- the gateway ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", SLOW)
def test_a_slow_server_ends_at_the_call_deadline(hostile, behaviour):
    _, cluster = hostile(behaviour, save=False)
    with pytest.raises(Unreachable, match=r"within 1\.5s"), services.gateway_for(cluster, timeout=1.5) as gw:
        gw.version()


@pytest.mark.parametrize("behaviour", LARGE)
def test_a_huge_answer_is_cut_at_the_cap_in_bounded_memory(hostile, behaviour):
    _, cluster = hostile(behaviour, save=False)
    with services.gateway_for(cluster, timeout=10, reuse=False) as gw:
        tracemalloc.start()
        try:
            with pytest.raises(Invalid, match="more than 4 MiB") as caught:
                gw.version()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "refusing to read further" in str(caught.value)
    assert peak < 2 * CAP, f"reading a refused answer peaked at {peak} bytes"


def test_a_server_with_a_certificate_from_another_ca_is_refused(hostile):
    _, cluster = hostile("wrong_ca", save=False)
    with pytest.raises(Unreachable, match=r"TLS verification .* failed"), services.gateway_for(cluster) as gw:
        gw.version()


def test_a_redirect_to_the_metadata_address_is_not_followed(hostile):
    server, cluster = hostile("redirect", save=False)
    with (
        pytest.raises(Unreachable, match=r"redirect \(302\), which is not followed") as caught,
        services.gateway_for(cluster) as gw,
    ):
        gw.version()
    assert "169.254.169.254" not in str(caught.value)
    assert server.requests == ["GET /version HTTP/1.1"]  # asked once, never re-sent anywhere


def test_a_healthy_server_still_answers(hostile):
    _, cluster = hostile("healthy", save=False)
    with services.gateway_for(cluster) as gw:
        assert gw.version()["gitVersion"] == "v1.33.0-hostile"


# --- live health check (inside a web request) and the sweep ------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["drip_headers", "endless", "slow_handshake"])
def test_the_live_health_check_ends_within_its_deadline(hostile, behaviour):
    _, cluster = hostile(behaviour, save=False)
    result = services.check_health(cluster, deadline=1.5)
    assert result["healthy"] is False
    assert result["checks"]["api"]["ok"] is False
    assert "within the 1.5s allowed for this check" in result["checks"]["api"]["error"]


@pytest.mark.django_db(transaction=True)
def test_the_health_endpoint_uses_the_live_check_deadline(hostile, api, settings):
    """The API view runs the check with CLUSTER_LIVE_CHECK_DEADLINE, not the gateway's 10 s per call."""
    settings.CLUSTER_LIVE_CHECK_DEADLINE = 1.5
    _, cluster = hostile("drip_headers")
    response = api.get(f"/clusters/{cluster.pk}/health")
    assert response.status_code == 503
    body = response.json()
    assert body["healthy"] is False
    assert "within the 1.5s allowed for this check" in body["checks"]["api"]["error"]


@pytest.mark.django_db(transaction=True)
def test_hostile_clusters_are_not_available_and_the_healthy_one_is(hostile):
    clusters = [hostile(b)[1] for b in (*SLOW, *LARGE, "wrong_ca", "redirect")]
    _, healthy = hostile("healthy")
    Cluster.objects.filter(pk=healthy.pk).update(status=ClusterStatus.NOT_AVAILABLE)
    report = services.sweep(
        timeout=1.5, workers=16, deadline=30, cluster_ids=[c.pk for c in [*clusters, healthy]]
    )
    assert report.checked == len(clusters) + 1
    statuses = dict(Cluster.objects.values_list("name", "status"))
    assert statuses.pop("healthy") == ClusterStatus.AVAILABLE
    assert set(statuses.values()) == {ClusterStatus.NOT_AVAILABLE}
    reasons = dict(Cluster.objects.values_list("name", "reason"))
    assert "did not answer within the 1.5s allowed" in reasons["drip-headers"]
    assert "more than 4 MiB" in reasons["flood"]
    assert "redirect" in reasons["redirect"]


@pytest.mark.django_db(transaction=True)
def test_the_sweep_returns_at_its_deadline_and_reports_who_did_not_answer(hostile):
    """One probe thread, a dripping cluster first: the sweep's own deadline ends it before the probe of the next
    cluster could even start, and both are reported."""
    _, slow = hostile("drip_headers")
    _, waiting = hostile("healthy", name="queued-behind")
    report = services.sweep(timeout=30, workers=1, deadline=1.0, cluster_ids=[slow.pk, waiting.pk])
    assert report.checked == 2
    for cluster in (slow, waiting):
        cluster.refresh_from_db()
        assert cluster.status == ClusterStatus.NOT_AVAILABLE
        assert "health sweep's deadline (1s, CLUSTER_HEALTH_SWEEP_DEADLINE)" in cluster.reason


# --- workflow steps ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_collectors_wait_treats_a_dripping_cluster_as_not_answering(hostile):
    """One poll of the wait costs at most the gateway's call deadline; the step then waits again."""
    from core.workflow import NotYet
    from hardware.workflows import wait_collectors

    _, cluster = hostile("drip_headers")
    ctx = SimpleNamespace(
        params={"cluster_id": cluster.pk},
        outputs={"ensure_collectors": {"daemonsets": ["nfd-worker"], "namespace": "bud-system"}},
    )
    outcome = wait_collectors(ctx)
    assert isinstance(outcome, NotYet)
    assert "cluster not answering" in outcome.message
    assert "did not answer within 10s" in outcome.message


@pytest.mark.django_db(transaction=True)
def test_registration_of_a_dripping_cluster_fails_its_verify_step(hostile, worker):
    dripping = HostileServer("drip_headers", interval=0.5)
    try:
        cluster, run = services.register_cluster(
            name="dripping", kubeconfig=dripping.kubeconfig_yaml().encode()
        )
        run = run_finished(run.pk, timeout=60)
    finally:
        dripping.close()
    verify = run.steps.get(name="verify")
    assert verify.status == "failed"
    assert "did not answer within 10s" in verify.message
    cluster.refresh_from_db()
    assert cluster.status != ClusterStatus.AVAILABLE
