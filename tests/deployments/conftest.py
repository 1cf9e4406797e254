"""Fixtures for deployment tests: a gpu-mixed devcluster (module scope) registered as a cluster, fast polls."""

from __future__ import annotations

import os

import pytest

from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from devcluster.sim.config import SimConfig
from devcluster.testing import devcluster_fixture
from tests.worker import run_finished

# Read by the worker subprocesses (they inherit this environment when they start, after collection).
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.3")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.3")

SIM = SimConfig(job_duration=1.5)
gpu = devcluster_fixture(name="gpu", nodes="gpu-mixed", scope="module", sim_config=SIM)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def finished(run_id, timeout: float = 60) -> Run:
    return run_finished(run_id, timeout)


_REGISTERED_ONCE: set[str] = set()


@pytest.fixture
def cluster(api, worker, gpu) -> Cluster:
    """The devcluster as an available cluster with its inventory stored.

    The first test of the module registers it through the API (the collectors put the GPU labels on the
    nodes); later tests store the validated, encrypted row directly and read the inventory, because the
    transactional tests empty the tables between tests and the registration run is not what they test.
    """
    from clusters import services
    from hardware.services import refresh_inventory

    if gpu.url not in _REGISTERED_ONCE:
        response = api.post(
            "/clusters/register", {"name": "gpu-mixed", "kubeconfig": gpu.kubeconfig_yaml()}, format="json"
        )
        assert response.status_code == 202, response.json()
        run = finished(response.json()["run_id"], timeout=90)
        assert run.status == RunStatus.SUCCEEDED, run.error
        _REGISTERED_ONCE.add(gpu.url)
        return Cluster.objects.get(name="gpu-mixed")
    checked = services.validate(gpu.kubeconfig_yaml().encode())
    cluster = Cluster.objects.create(
        name="gpu-mixed", server_url=checked.server, kubeconfig=checked.normalized_yaml(), status="available"
    )
    with services.gateway_for(cluster) as gw:
        refresh_inventory(cluster, gw)
    return cluster
