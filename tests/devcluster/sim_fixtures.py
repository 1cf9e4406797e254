"""Fixtures for the simulation tests: a gpu-mixed devcluster with short timings and official clients.

Test modules load these with `pytest_plugins = ["tests.devcluster.sim_fixtures"]`; helpers live in
`devcluster.sim.testing`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client

from devcluster.harness import DevCluster
from devcluster.sim import SimConfig
from devcluster.sim.testing import wait_for
from devcluster.testing import kube_client

FAST = SimConfig(
    pod_start_delay=0.05,
    pod_ready_delay=0.05,
    job_duration=0.4,
    crash_backoff=0.1,
    transfer_progress_interval=0.05,
)


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[DevCluster]:
    dc = DevCluster(nodes="gpu-mixed", sim_config=FAST).start()
    try:
        yield dc
    finally:
        from devcluster import sim

        dc.call(sim.shutdown)
        dc.stop()


@pytest.fixture(scope="module")
def kube_api(gpu_cluster: DevCluster) -> Any:
    return kube_client(gpu_cluster)


@pytest.fixture(scope="module")
def core(kube_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture(scope="module")
def apps(kube_api: Any) -> client.AppsV1Api:
    return client.AppsV1Api(kube_api)


@pytest.fixture(scope="module")
def batch(kube_api: Any) -> client.BatchV1Api:
    return client.BatchV1Api(kube_api)


@contextmanager
def _namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
    wait_for(lambda: name not in {n.metadata.name for n in core.list_namespace().items}, timeout=10)


@pytest.fixture
def ns(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test; deleting it frees whatever the test scheduled."""
    with _namespace(core) as name:
        yield name


def _node_labels(core: client.CoreV1Api) -> dict[str, dict[str, str]]:
    return {n.metadata.name: dict(n.metadata.labels or {}) for n in core.list_node().items}


@pytest.fixture
def collector_ns(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for a test that runs collectors (NFD, GFD, the AMD labeller). The labels they publish
    stay on the nodes when their pods go, as the real ones do; so once the namespace is gone the nodes get their
    labels from before the test back, and the module's next test sees the preset's nodes unlabelled."""
    before = _node_labels(core)
    with _namespace(core) as name:
        yield name
    for node, labels in _node_labels(core).items():
        was = before.get(node, {})
        if labels != was:
            # A merge patch: a key set to None is removed, the others get their old value back.
            undo = {k: None for k in labels if k not in was} | {
                k: v for k, v in was.items() if labels.get(k) != v
            }
            core.patch_node(node, {"metadata": {"labels": undo}})
    assert _node_labels(core) == before
