"""Fixtures for tests on the real control plane: one gpu-mixed control plane for the session, and that control
plane registered as a cluster (with its inventory) for the tests that deploy on it."""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from devcluster.real.testing import real_cluster  # noqa: F401  (re-exported session fixture)

# Read by the worker subprocesses (they inherit this environment when they start, after collection).
os.environ.setdefault("DEPLOY_POLL_INTERVAL", "0.3")
os.environ.setdefault("DEPLOY_VERIFY_INTERVAL", "0.3")


@pytest.fixture
def registered(api, worker, real_cluster, settings):  # noqa: F811
    """The real control plane as an available cluster with its inventory stored.

    When no collector has labelled the nodes yet, it is registered through the API (setup playbook,
    collectors, inventory); otherwise the validated, encrypted row is stored directly and the inventory read,
    as the transactional tests empty the tables between tests."""
    from clusters import services
    from clusters.models import Cluster
    from hardware.services import refresh_inventory

    from .test_lifecycle import succeeded

    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    core = client.CoreV1Api(real_cluster.client())
    labelled = core.read_node("gpu-h100-0").metadata.labels.get("nvidia.com/gpu.product")
    kubeconfig = real_cluster.kubeconfig_yaml()
    if not labelled:
        response = api.post("/clusters/register", {"name": "real", "kubeconfig": kubeconfig}, format="json")
        succeeded(response, timeout=180)
        return Cluster.objects.get(name="real")
    checked = services.validate(kubeconfig.encode())
    cluster = Cluster.objects.create(
        name="real", server_url=checked.server, kubeconfig=checked.normalized_yaml(), status="available"
    )
    with services.gateway_for(cluster) as gw:
        refresh_inventory(cluster, gw)
    return cluster


def pytest_sessionfinish(session) -> None:
    """The devcluster fidelity table (tests/real/test_fidelity.py), when its comparisons ran this session; printed
    at the end of the run (by the controller, under xdist)."""
    import sys

    from tests.parallel import add_summary

    fidelity = sys.modules.get("tests.real.test_fidelity")
    add_summary(
        session.config, "devcluster fidelity", fidelity.summary_lines() if fidelity is not None else []
    )
