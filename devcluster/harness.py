"""The `DevCluster` harness: an API server with its clusters, TLS and kubeconfigs, on a thread or a loop.

Tests and scripts start one with `DevCluster(...).start()` (a background thread with its own event loop;
`.url`, `.kubeconfig(name)`, `.admin_token`, `.call(fn)` to run code against a store on the loop thread,
`.stop()`, `.restart()`); the command line (`python -m devcluster serve`) awaits `setup()` and `shutdown()` on
its own loop.  The harness owns the PKI and the admin token; `setup()` starts the `ApiServer`
(devcluster.server), creates the virtual clusters and attaches the simulation (devcluster.sim) to each, or,
when the simulation package is absent, stores a few plain Node objects.

Restarts: `stop()` then `start()` (or `restart()`) serves again on the same port with the same CA, tokens
and objects.  With `state_dir` everything comes back from the directory (devcluster.persist), exactly as a new
process would find it, including after a crash; without one the stores are handed over in memory.  Either way
the restored clusters get a fresh `VirtualCluster` (held `dc.cluster()` objects go stale) and the simulation
takes over their nodes and pods where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devcluster import kubeconfig as kc
from devcluster import openapi, tls
from devcluster.persist import StateDir
from devcluster.server import ApiServer
from devcluster.store import VirtualCluster

log = logging.getLogger("devcluster")

# ----------------------------------------------------------------------------------------------- simulation


def _load_sim() -> Any:
    try:
        from devcluster import sim
    except ImportError:
        return None
    return sim if hasattr(sim, "attach") else None


FALLBACK_NODES = 2


def fallback_nodes(spec: str | None) -> list[dict]:
    """Nodes when the simulation package is absent: a YAML file of Node objects or two small CPU nodes."""
    if spec and Path(spec).is_file():
        docs = [d for d in yaml.safe_load_all(Path(spec).read_text()) if d]
        nodes: list[dict] = []
        for d in docs:
            nodes.extend(d if isinstance(d, list) else d.get("items", [d]) if isinstance(d, dict) else [])
        return nodes
    out = []
    for i in range(FALLBACK_NODES):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"cpu-node-{i}",
                    "labels": {
                        "kubernetes.io/hostname": f"cpu-node-{i}",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
                "spec": {},
                "status": {
                    "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                    "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "nodeInfo": {
                        "kubeletVersion": openapi.K8S_VERSION["gitVersion"],
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                    },
                },
            }
        )
    return out


def _fallback_attach(vc: VirtualCluster, nodes: list[dict]) -> None:
    for n in nodes:
        if vc.peek("nodes", None, n["metadata"]["name"]) is None:  # a restored cluster has them already
            vc.create("nodes", n)


# ----------------------------------------------------------------------------------------------- DevCluster


def cluster_names(count: int) -> list[str]:
    """ "default" for one cluster, else c0001, c0002, ... (zero-padded to at least 4 digits)."""
    if count <= 1:
        return ["default"]
    width = max(4, len(str(count)))
    return [f"c{i:0{width}d}" for i in range(1, count + 1)]


class DevCluster:
    """An emulated API server on a background thread, for tests and scripts.

    >>> dc = DevCluster(nodes="cpu-small", clusters=2).start()
    >>> cfg = dc.kubeconfig("c0001")      # kubeconfig dict with CA data and token
    >>> dc.restart()                      # same port, CA, tokens and objects
    >>> dc.stop()

    `state_dir` keeps the PKI, the admin token and every cluster's objects in that directory
    (devcluster.persist): a later DevCluster (or `python -m devcluster serve --state-dir`) on the same
    directory and port is the same API server to its clients.  Clusters found there are served as they were
    (their own OpenShift flag and token); requested names not found there are created.
    """

    def __init__(
        self,
        nodes: str | list[dict] | None = None,
        clusters: int = 1,
        port: int = 0,
        host: str = "127.0.0.1",
        names: list[str] | None = None,
        openshift: bool = False,
        sim_config: Any = None,
        use_sim: bool = True,
        state_dir: str | Path | None = None,
    ) -> None:
        self.nodes_spec = nodes
        self.names = names or cluster_names(clusters)
        self.openshift = openshift
        self.sim_config = sim_config
        self.use_sim = use_sim
        self.host = host
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._state = StateDir(self.state_dir) if self.state_dir is not None else None
        if self._state is not None:
            self.pki, self.admin_token = self._state.load_pki(host)
        else:
            self.admin_token = secrets.token_urlsafe(32)
            self.pki = tls.generate([host])
        self.server = ApiServer(self.pki, self.admin_token, host=host, port=port)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._served = False  # self.server has been started once (a later start needs a new one)
        self._kept: dict[str, VirtualCluster] | None = None  # clusters handed over in memory by shutdown()

    # -------------------------------------------------------------- setup shared with the CLI
    async def setup(self) -> None:
        """Start serving and create the clusters (on the running loop)."""
        loop = asyncio.get_running_loop()
        if self._served:  # started before: serve again on the port clients know
            self.server = ApiServer(self.pki, self.admin_token, host=self.host, port=self.server.port)
        self._served = True
        if self._state is not None:
            restored = self._state.open()
        else:
            restored, self._kept = self._kept or {}, None
        try:
            await self._setup(loop, restored)
        except BaseException:
            if self._state is not None:
                self._state.close()
            raise

    async def _setup(self, loop: asyncio.AbstractEventLoop, restored: dict[str, VirtualCluster]) -> None:
        # Restored clusters are in place before the port opens: a client coming back never sees them missing.
        for name, vc in restored.items():
            vc.loop = loop
            self.server.clusters[name] = vc
            vc.resume()
        self.names = self.names + [n for n in restored if n not in self.names]
        await self.server.start()
        if restored:
            log.info(
                "devcluster: %d cluster(s) restored with %d object(s)%s",
                len(restored),
                sum(vc.object_count() for vc in restored.values()),
                f" from {self.state_dir}" if self.state_dir else "",
            )
        sim = _load_sim() if self.use_sim else None
        self.server.sim_module = sim
        nodes = self._resolve_nodes(sim)
        config = self.sim_config
        if sim is not None and config is None and hasattr(sim, "SimConfig"):
            config = sim.SimConfig()
        for i, name in enumerate(n for n in self.names if n not in self.server.clusters):
            self.server.add_cluster(name, openshift=self.openshift)
            if i % 50 == 49:
                await asyncio.sleep(0)  # let already-started requests through while thousands are created
        if self._state is not None:
            self._state.start(self.server.clusters, loop)  # from here on every change is journaled
        for i, vc in enumerate(list(self.server.clusters.values())):
            if sim is not None:
                sim.attach(vc, config, nodes)
            else:
                _fallback_attach(vc, nodes)
            if i % 50 == 49:
                await asyncio.sleep(0)

    def _resolve_nodes(self, sim: Any) -> list[dict]:
        spec = self.nodes_spec
        if isinstance(spec, list):
            return spec
        if sim is not None and hasattr(sim, "load_nodes"):
            return sim.load_nodes(spec or "cpu-small")
        return fallback_nodes(spec)

    async def shutdown(self) -> None:
        """Stop serving and save the clusters: to the state directory (a final checkpoint), or in memory for
        the next `setup()` of this DevCluster."""
        await self.server.stop()
        self._release()

    def _release(self) -> None:
        sim = self.server.sim_module
        detach = getattr(sim, "detach", None)
        for vc in self.server.clusters.values():
            if detach is not None:
                detach(vc)  # timers, listeners and load-balancer addresses go with this server
        if self._state is not None:
            self._state.close()
        else:
            self._kept = {
                name: VirtualCluster.from_state(vc.export_state())
                for name, vc in self.server.clusters.items()
            }

    # -------------------------------------------------------------- thread mode
    def start(self, timeout: float = 120.0) -> DevCluster:
        """Serve on a background thread; after `stop()`, again on the same port with the same state."""
        if self._thread is not None:
            raise RuntimeError("devcluster is already running")
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="devcluster", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("devcluster did not start in time")
        if self._error is not None:
            self._thread.join(timeout=30)
            self._thread = None
            raise RuntimeError(f"devcluster failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.setup())
        except BaseException as exc:
            self._error = exc
            with contextlib.suppress(Exception):
                loop.run_until_complete(self.server.stop())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            # Open watches and held ("unreachable") requests end with the loop.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            try:
                self._release()  # after the requests ended: nothing changes behind the final checkpoint
            finally:
                loop.close()

    def stop(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self.loop = None

    def restart(self, down_for: float = 0) -> DevCluster:
        """Stop the server, stay down `down_for` seconds (connections refused meanwhile), and start it again
        on the same port with the same PKI, tokens and objects (see the module docstring)."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)  # the outage itself, not a synchronisation
        return self.start()

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Run fn(*args) on the server loop (where the stores live) and return its result."""
        if self.loop is None:
            raise RuntimeError("not started")

        async def run() -> Any:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                res = await res
            return res

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    # -------------------------------------------------------------- accessors
    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ca_pem(self) -> bytes:
        return self.pki.ca_pem

    def cluster(self, name: str | None = None) -> VirtualCluster:
        return self.server.clusters[name or self.names[0]]

    def cluster_url(self, name: str | None = None) -> str:
        return self.server.cluster_url(name or self.names[0])

    def token(self, name: str | None = None) -> str:
        return self.cluster(name).token

    def kubeconfig(self, name: str | None = None) -> dict:
        return self.server.kubeconfig(name or self.names[0])

    def kubeconfig_yaml(self, name: str | None = None) -> str:
        return kc.dump(self.kubeconfig(name))

    def set_fault(
        self, name: str, kind: str, target: str | None = None, delay: float | None = None, value: Any = None
    ) -> None:
        self.call(self.server.set_fault, self.cluster(name), kind, target, delay, value)

    def write_kubeconfigs(self, out: str | Path) -> list[Path]:
        """Write kubeconfig files (0600): OUT for the first cluster; with several clusters also
        OUT-stem.d/<name>.yaml for every cluster.  The admin token goes to OUT-stem.admin-token."""
        out = Path(out)
        written = [out]
        kc.write_private(out, self.kubeconfig_yaml(self.names[0]))
        if len(self.names) > 1:
            d = out.with_name(out.stem + ".d")
            for n in self.names:
                p = d / f"{n}.yaml"
                kc.write_private(p, self.kubeconfig_yaml(n))
                written.append(p)
        kc.write_private(out.with_name(out.stem + ".admin-token"), self.admin_token + "\n")
        return written
