"""pytest fixtures for the real control plane.

    from devcluster.real.testing import real_cluster  # noqa: F401  (session-scoped, gpu-mixed nodes)

or a differently shaped one:

    from devcluster.real.testing import real_cluster_fixture
    big = real_cluster_fixture(name="big", nodes=[...], scope="module")

The binaries come from `make k8s` (built on first use by scripts/build_k8s.sh).  They are never optional: if
they cannot be built or started, the fixture raises and every test using it fails with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devcluster.real.controlplane import ControlPlane


def real_cluster_fixture(
    *,
    name: str = "real_cluster",
    scope: str = "session",
    nodes: str | list[dict] = "gpu-mixed",
    **kwargs: Any,
) -> Callable[..., Iterator[ControlPlane]]:
    """A pytest fixture (registered under `name`) yielding a started `ControlPlane`."""

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload]
    def _fixture() -> Iterator[ControlPlane]:
        cp = ControlPlane(nodes=nodes, **kwargs).start()
        try:
            yield cp
        finally:
            cp.stop()

    return _fixture


real_cluster = real_cluster_fixture()
