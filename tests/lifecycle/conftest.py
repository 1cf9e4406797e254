"""Fixtures for lifecycle tests: a small devcluster per module and a cluster row for it (validated, encrypted).

Each test gets the state it needs from these: the cluster row is created per test (transactional tests empty
the tables between tests), never left behind by an earlier test.
"""

from __future__ import annotations

import os

import pytest

from clusters import services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from devcluster.sim.config import SimConfig
from devcluster.testing import devcluster_fixture

# Read by the worker subprocesses (they inherit this environment when they start, after collection).
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.3")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.3")

SIM = SimConfig(job_duration=0.5)
lifecycle_dc = devcluster_fixture(name="lifecycle_dc", nodes="gpu-mixed", scope="module", sim_config=SIM)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def store_cluster(dc, name: str = "life", status: str = ClusterStatus.AVAILABLE) -> Cluster:
    """The devcluster as a cluster row, as registration stores it (no run)."""
    checked = services.validate(dc.kubeconfig_yaml().encode())
    return Cluster.objects.create(
        name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status=status
    )
