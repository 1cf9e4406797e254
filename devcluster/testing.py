"""pytest helpers: run a devcluster in-process for a test session and build clients for it.

Reuse from any test folder's conftest.py:

    from devcluster.testing import devcluster  # noqa: F401  (session-scoped, one server)

or make a differently shaped one:

    from devcluster.testing import devcluster_fixture
    gpu_cluster = devcluster_fixture(name="gpu_cluster", nodes="gpu-mixed", scope="module")

The server binds 127.0.0.1 on a free port, runs on a background thread and is stopped when the fixture's
scope ends.  `kube_client(dc)` gives an official-client ApiClient; `write_kubeconfig(dc, path)` a 0600 file
for kubectl, Helm or Ansible.

A test that restarts the API server (`dc.restart()`, or `dc.stop()` ... `dc.start()`) can ask for a state
directory, so the restart reloads everything from disk as a new process would:

    gpu = devcluster_fixture(name="gpu", nodes="gpu-mixed", scope="module", state_dir=True)

(`True`: a fresh directory under pytest's temporary directory; or a path.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import kubeconfig as kc
from devcluster.harness import DevCluster


def devcluster_fixture(
    *,
    name: str = "devcluster",
    scope: str = "session",
    nodes: str | list[dict] | None = None,
    clusters: int = 1,
    openshift: bool = False,
    state_dir: bool | str | Path | None = None,
    **kwargs: Any,
) -> Callable[..., Iterator[DevCluster]]:
    """A pytest fixture (registered under `name`) yielding a started `DevCluster`; `state_dir=True` gives it
    a state directory of its own (devcluster.persist)."""

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload]
    def _fixture(request: pytest.FixtureRequest) -> Iterator[DevCluster]:
        where = state_dir
        if where is True:
            where = request.getfixturevalue("tmp_path_factory").mktemp(f"{name}-state")
        dc = DevCluster(
            nodes=nodes, clusters=clusters, openshift=openshift, state_dir=where or None, **kwargs
        ).start()
        try:
            yield dc
        finally:
            dc.stop()

    return _fixture


devcluster = devcluster_fixture()


def kube_client(dc: DevCluster, cluster: str | None = None) -> Any:
    """An official `kubernetes` ApiClient for one virtual cluster (CA verified, bearer token)."""
    from kubernetes import config

    return config.new_client_from_config_dict(dc.kubeconfig(cluster))


def write_kubeconfig(dc: DevCluster, path: str | Path, cluster: str | None = None) -> Path:
    """Write one virtual cluster's kubeconfig to `path` (0600) and return the path."""
    p = Path(path)
    kc.write_private(p, dc.kubeconfig_yaml(cluster))
    return p
