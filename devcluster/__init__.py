"""devcluster: a local Kubernetes API emulator with simulated nodes, for development and tests.

`python -m devcluster serve ...` runs it; `devcluster.harness.DevCluster` runs it in-process on a thread;
`devcluster.testing` has pytest fixtures.  See the README section "Local cluster".
"""

__all__ = ["DevCluster"]


def __getattr__(name: str) -> object:
    # Imported lazily so `import devcluster.store` (used by the simulation) does not pull in aiohttp.
    if name == "DevCluster":
        from devcluster.harness import DevCluster

        return DevCluster
    raise AttributeError(name)
