"""Collect node information with one NotReady node (the console's *Collect node information*, the API's
collect-node-info: one ``hardware.collect`` run).

The collectors cannot become ready on a node whose kubelet is down, so waiting for them there only ends at the
deadline. The run waits for such a node at most ``COLLECTOR_NOT_READY_TIMEOUT`` seconds, then stores what the
cluster shows and ends partial, naming the node and why it was not collected.
"""

from __future__ import annotations

import pytest

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster, ClusterEvent
from core.choices import RunStatus
from core.models import RunEvent
from devcluster.testing import devcluster_fixture
from hardware import services
from hardware.models import Node
from tests.conftest import WORKER_ENV
from tests.worker import WorkerProcess, run_finished

dc_nodes = devcluster_fixture(name="dc_nodes", nodes="cpu-small", scope="module")

pytestmark = pytest.mark.django_db(transaction=True)

NOT_READY_WAIT = 2
# Without the NotReady bound the run would wait this long and fail; the test gives the run far less than that.
COLLECTOR_TIMEOUT = 120


@pytest.fixture
def collect_worker(celery_worker_process, transactional_db):
    """The only consumer while the test runs: a worker with a short NotReady bound (the session worker stops)."""
    celery_worker_process.stop()
    worker = WorkerProcess(
        name="collect",
        extra_env={
            **WORKER_ENV,
            "COLLECTOR_NOT_READY_TIMEOUT": str(NOT_READY_WAIT),
            "COLLECTOR_TIMEOUT": str(COLLECTOR_TIMEOUT),
        },
    )
    try:
        yield worker.start()
    finally:
        worker.stop()
        celery_worker_process.start()


def _cluster(settings, dc) -> Cluster:
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    checked = cluster_services.validate(dc.kubeconfig_yaml().encode())
    return Cluster.objects.create(
        name="nodes",
        server_url=checked.server,
        kubeconfig=checked.normalized_yaml(),
        status=ClusterStatus.AVAILABLE,
    )


def test_a_not_ready_node_is_named_and_the_rest_is_stored(settings, dc_nodes, collect_worker):
    cluster = _cluster(settings, dc_nodes)
    first = run_finished(services.start_collection(cluster).pk, timeout=90)
    assert first.status == RunStatus.SUCCEEDED, first.error
    nodes = dict(Node.objects.filter(cluster=cluster).values_list("name", "ready"))
    assert len(nodes) == 3 and all(nodes.values())
    down = sorted(n for n in nodes if n.startswith("cpu-worker"))[0]

    dc_nodes.set_fault(dc_nodes.names[0], "node-not-ready", down)
    try:
        run = services.start_collection(cluster)
        # Far less than COLLECTOR_TIMEOUT: the NotReady node holds the run only for COLLECTOR_NOT_READY_TIMEOUT.
        run = run_finished(run.pk, timeout=45)
    finally:
        dc_nodes.set_fault(dc_nodes.names[0], "clear")

    assert run.status == RunStatus.SUCCEEDED, run.error
    read = run.steps.get(name="read_nodes")
    assert read.output["partial"] is True
    assert list(read.output["not_collected"]) == [down]
    why = read.output["not_collected"][down]
    assert "NotReady" in why and "container runtime is down" in why and "nfd-worker" in why
    # What the cluster shows was stored: the other nodes, and this one as not ready.
    stored = dict(Node.objects.filter(cluster=cluster).values_list("name", "ready"))
    assert stored == {**nodes, down: False}
    # The run's events and the cluster's say which node was left out and why.
    partial = RunEvent.objects.filter(run=run, step="read_nodes", data__outcome="partial").get()
    assert f"1 of 3 nodes not collected: {down}" in partial.message
    assert partial.data["not_collected"] == {down: why}
    event = ClusterEvent.objects.filter(cluster=cluster, kind="inventory").get()
    assert down in event.message and "NotReady" in event.message
    waited = run.steps.get(name="wait_collectors")
    assert waited.output["not_collected"] == {down: why}
