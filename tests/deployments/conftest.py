"""Fixtures for deployment tests: a gpu-mixed devcluster (module scope), a cluster row for it per test, fast polls.

Every test starts from the same devcluster state, whichever tests ran before it and in whatever order:

- `gpu` is the devcluster (module scope; a test module may override it, e.g. with a state directory).
- `gpu_baseline` (module scope) prepares it once, independent of any test: the node-info collectors chart is
  rolled out straight onto it (the chart and values registration applies, server-side applied, no run, no rows),
  then it waits until every node carries the labels the collectors publish (the GPU products placement needs).
  It records what is there then: the namespaces and the simulation's settings.
- `cluster` (per test) stores the validated, encrypted row and reads the inventory, the same way for every test.
  The transactional tests empty the tables between tests, so the row is always made anew.
- `registered_cluster` (per test) registers the devcluster through the API instead, for a test that means to
  go through the registration run.
- After each test that used either, its runs settle and the devcluster goes back to the baseline: namespaces the
  test left (deployments still running, kept failures) are deleted and awaited, so their pods no longer hold GPUs
  that the next test's placement would see taken; cluster faults are cleared and the simulation's settings
  restored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings

from clusters.models import Cluster
from core.choices import RunStatus
from core.gateway import ClusterGateway
from core.models import Run
from devcluster.harness import DevCluster
from devcluster.sim.config import SimConfig
from devcluster.testing import devcluster_fixture
from tests.conftest import settle_runs
from tests.worker import run_finished, wait_for

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


@dataclass(frozen=True)
class Baseline:
    """What the prepared devcluster holds before any test: its namespaces and the simulation's settings."""

    namespaces: frozenset[str]
    sim_config: dict


def _gateway(dc: DevCluster) -> ClusterGateway:
    # The devcluster listens on loopback; the module fixture runs outside any test's `settings`.
    return ClusterGateway(dc.kubeconfig(), timeout=30, allow_loopback=True)


def roll_out_collectors(dc: DevCluster, timeout: float = 120) -> None:
    """The collectors as registration leaves them: the same chart and values, applied; every collector ready on
    its nodes and its labels on them (the check registration's wait_collectors step makes)."""
    from clusters.releases import _apply_objects, _label
    from core import helm
    from hardware.services import unlabelled_nodes
    from hardware.workflows import COLLECTOR_CHART, COLLECTOR_RELEASE, collector_namespace

    namespace = collector_namespace()
    values = {"namespace": namespace, **getattr(settings, "COLLECTOR_VALUES", {})}
    _, objects = helm.render(COLLECTOR_CHART, values, release=COLLECTOR_RELEASE, namespace=namespace)
    with _gateway(dc) as gw:
        applied = _apply_objects(gw, namespace, _label(objects, COLLECTOR_RELEASE))
        names = [o["name"] for o in applied if o["kind"] == "DaemonSet"]

        def collected() -> bool:
            daemonsets = {name: gw.get("apps/v1", "DaemonSet", name, namespace) for name in names}
            for ds in daemonsets.values():
                status = ds.get("status") or {}
                desired = status.get("desiredNumberScheduled")
                if desired is None or status.get("numberReady", 0) < desired:
                    return False
            return not unlabelled_nodes(gw, namespace, daemonsets)

        wait_for(collected, timeout=timeout, interval=0.2, what="the collectors to label every node")


def _namespaces(gw: ClusterGateway) -> set[str]:
    return {n["metadata"]["name"] for n in gw.list("v1", "Namespace")}


@pytest.fixture(scope="module")
def gpu_baseline(gpu: DevCluster) -> Baseline:
    """The module's devcluster, prepared once with the collectors and their labels (see the module docstring)."""
    roll_out_collectors(gpu)
    with _gateway(gpu) as gw:
        namespaces = frozenset(_namespaces(gw))
    sim_config = dataclasses.asdict(gpu.sim_config) if gpu.sim_config is not None else {}
    return Baseline(namespaces=namespaces, sim_config=sim_config)


def restore_baseline(dc: DevCluster, baseline: Baseline) -> None:
    """Put the devcluster back as `gpu_baseline` left it: no faults, the same settings, no other namespace."""
    for name in dc.names:
        dc.set_fault(name, "clear")
    for field, value in baseline.sim_config.items():
        setattr(dc.sim_config, field, value)
    with _gateway(dc) as gw:
        left = _namespaces(gw) - baseline.namespaces
        for namespace in left:
            gw.delete("v1", "Namespace", namespace)
        wait_for(
            lambda: not (_namespaces(gw) & left),
            timeout=60,
            interval=0.2,
            what=f"namespaces {sorted(left)} gone",
        )


@pytest.fixture
def gpu_reset(gpu, gpu_baseline, worker) -> Iterator[DevCluster]:
    """The prepared devcluster for one test; afterwards (runs settled first, so none of them is still creating
    objects) it is put back to the baseline."""
    yield gpu
    settle_runs()
    restore_baseline(gpu, gpu_baseline)


def _store_cluster(dc: DevCluster) -> Cluster:
    from clusters import services
    from hardware.services import refresh_inventory

    checked = services.validate(dc.kubeconfig_yaml().encode())
    cluster = Cluster.objects.create(
        name="gpu-mixed", server_url=checked.server, kubeconfig=checked.normalized_yaml(), status="available"
    )
    with services.gateway_for(cluster) as gw:
        refresh_inventory(cluster, gw)
    return cluster


@pytest.fixture
def cluster(api, gpu_reset) -> Cluster:
    """The devcluster as an available cluster with its inventory stored (validated, encrypted row; no run)."""
    return _store_cluster(gpu_reset)


@pytest.fixture
def registered_cluster(api, gpu_reset) -> Cluster:
    """The devcluster registered through the API: the registration run (verify → setup → collectors → inventory)
    on the worker, for tests that go the way a user does."""
    response = api.post(
        "/clusters/register", {"name": "gpu-mixed", "kubeconfig": gpu_reset.kubeconfig_yaml()}, format="json"
    )
    assert response.status_code == 202, response.json()
    run = finished(response.json()["run_id"], timeout=90)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Cluster.objects.get(name="gpu-mixed")


def namespace_objects(cluster, namespace: str) -> dict[str, list[str]]:
    """Names of the workload objects in ``namespace`` of the cluster, by kind (duplicate checks)."""
    from clusters.services import gateway_for

    with gateway_for(cluster) as gw:
        return {
            kind: sorted(o["metadata"]["name"] for o in gw.list(api_version, kind, namespace))
            for kind, api_version in (
                ("Deployment", "apps/v1"), ("Service", "v1"), ("Job", "batch/v1"),
                ("PersistentVolumeClaim", "v1"), ("Pod", "v1"), ("ReplicaSet", "apps/v1"),
            )
        }  # fmt: skip
