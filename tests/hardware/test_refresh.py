"""The periodic inventory refresh: every available cluster in parallel, one failure only its own."""

from __future__ import annotations

import logging

import pytest
from kubernetes import client

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from devcluster.testing import devcluster_fixture, kube_client
from hardware.models import Node
from hardware.tasks import refresh_all

two = devcluster_fixture(name="two", nodes="cpu-small", clusters=2, scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _store(dc, name: str, vc: str, status=ClusterStatus.AVAILABLE) -> Cluster:
    checked = cluster_services.validate(dc.kubeconfig_yaml(vc).encode())
    return Cluster.objects.create(
        name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status=status
    )


def test_refresh_all_reports_each_failing_cluster_and_refreshes_the_rest(two, caplog):
    healthy = _store(two, "healthy", two.names[0])
    _store(two, "failing", two.names[1])
    resting = _store(two, "resting", two.names[0], status=ClusterStatus.NOT_AVAILABLE)
    two.set_fault(two.names[1], "error")
    try:
        with caplog.at_level(logging.WARNING, logger="hardware.tasks"):
            result = refresh_all()
    finally:
        two.set_fault(two.names[1], "clear")
    assert result["refreshed"] == 1
    assert list(result["failed"]) == ["failing"] and result["failed"]["failing"]
    assert "inventory refresh failed for 1 cluster(s)" in caplog.text
    nodes = client.CoreV1Api(kube_client(two, two.names[0])).list_node().items
    assert set(Node.objects.filter(cluster=healthy).values_list("name", flat=True)) == {
        n.metadata.name for n in nodes
    }
    assert not Node.objects.filter(cluster=resting).exists()  # only available clusters are refreshed
