"""Start and stop a real control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK.

Everything lives in one private work directory (PKI, kubeconfigs, etcd data, logs) and listens on loopback
ports chosen at start, so several control planes can run side by side (a test session and a developer's
`real serve`).  Processes die with their parent (PR_SET_PDEATHSIG), so a crashed test session leaves no API
server behind.

Choices that keep every byte on this machine:
- nodes report InternalIP 127.0.0.1 and pod CIDRs in 127.244.0.0/16, so nothing ever dials a private range
  (the API server refuses to proxy to loopback pod IPs, rightly; nothing here needs that proxy);
- Services of type LoadBalancer get loopback addresses from the agent (``devcluster.real.agent``).
  The EndpointSlice controller refuses loopback pod IPs ("may not be in the loopback range"), so Services
  have no EndpointSlices here; BudCluster never reads them, and the agent routes to Ready pods by selector.

Start-up (cached binaries, 2 cores): etcd and the API server are ready in a few seconds; the API server's
post-start hooks (bootstrap RBAC, priority classes) dominate.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ctypes
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devcluster import kubeconfig as kc
from devcluster.sim.presets import HARDWARE_KEY, load_nodes
from devcluster.tls import Authority

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_k8s.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"  # allocated numbers only: nothing in the test bed dials a Service's cluster IP
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
STORAGE_CLASS = "kwok-volume"  # the name KWOK's volume stages provision for
POD_CIDR_PREFIX = "127.244"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says which part and why."""


def binaries() -> Path:
    """The directory holding the five binaries: $BUDCLUSTER_K8S_BIN, else `scripts/build_k8s.sh` (which
    builds them once into the cache and afterwards only prints where they are)."""
    override = os.environ.get("BUDCLUSTER_K8S_BIN")
    if override:
        path = Path(override)
    else:
        try:
            out = subprocess.run(
                ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True, timeout=3600
            ).stdout
        except FileNotFoundError as exc:
            raise ControlPlaneError(f"cannot run {BUILD_SCRIPT}: {exc}") from exc
        except subprocess.CalledProcessError as exc:
            raise ControlPlaneError(
                f"`make k8s` ({BUILD_SCRIPT.name}) failed with exit code {exc.returncode}; see its output above"
            ) from exc
        path = Path(out.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not os.access(path / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{path} lacks {', '.join(missing)}: run `make k8s`")
    return path


def stages_dir(bin_dir: Path) -> Path:
    return bin_dir.parent / "stages"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for a child process that must not outlive the thread that started it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Seconds kube-apiserver may take to exit on SIGTERM before it is killed (see ControlPlane.stop).
APISERVER_STOP_GRACE = 2.0


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child; closed after Popen dups it
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # only a prctl between fork and exec
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the children directly
                env=env,
            )
        finally:
            out.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Identity:
    """A client certificate and the kubeconfig built from it."""

    user: str
    cert_pem: bytes
    key_pem: bytes
    kubeconfig_path: Path


@dataclass
class ControlPlane:
    """A real Kubernetes control plane on loopback.  Use as a context manager or call start()/stop()."""

    nodes: str | list[dict] | None = "gpu-mixed"
    workdir: Path | None = None
    bin_dir: Path | None = None
    sim_config: Any = None
    agent: bool = True
    keep_workdir: bool = False

    components: dict[str, Component] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    hardware: dict[str, dict] = field(default_factory=dict)
    port: int = 0
    started_in: float = 0.0
    _own_workdir: bool = False
    _agent: Any = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> ControlPlane:
        started = time.monotonic()
        self.bin_dir = Path(self.bin_dir) if self.bin_dir else binaries()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="budcluster-k8s-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        try:
            self._write_pki()
            self._start_etcd(deadline=started + timeout)
            self._start_apiserver(deadline=started + timeout)
            self._create_nodes()
            self._start_controllers()
            self._wait_settled(deadline=started + timeout)
            if self.agent:
                from devcluster.real.agent import Agent

                self._agent = Agent(self)
                self._agent.start()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        log.info("control plane ready at %s in %.1f s", self.url, self.started_in)
        return self

    def stop(self) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            comp = self.components.get(name)
            if comp is not None:
                # kube-apiserver's graceful shutdown outlasts any grace we would give it (measured: still running
                # after 10 s with no client left); nothing of the test cluster lives in it (etcd, stopped after it
                # and gracefully, holds the state), so it gets a short grace before SIGKILL.
                comp.stop(timeout=APISERVER_STOP_GRACE if name == "kube-apiserver" else 10.0)
        if self._own_workdir and self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem

    def kubeconfig(self, user: str = "admin") -> dict:
        ident = self.identities[user]
        return _kubeconfig_doc(
            "budcluster-real",
            self.url,
            self.ca_pem,
            user,
            {
                "client-certificate-data": base64.b64encode(ident.cert_pem).decode(),
                "client-key-data": base64.b64encode(ident.key_pem).decode(),
            },
        )

    def kubeconfig_yaml(self, user: str = "admin") -> str:
        return kc.dump(self.kubeconfig(user))

    def token_kubeconfig_yaml(self, token: str, user: str = "token-user") -> str:
        """A kubeconfig that authenticates with a bearer token (e.g. a service account's)."""
        return kc.dump(_kubeconfig_doc("budcluster-real", self.url, self.ca_pem, user, {"token": token}))

    def write_kubeconfig(self, path: str | Path, user: str = "admin") -> Path:
        p = Path(path)
        kc.write_private(p, self.kubeconfig_yaml(user))
        return p

    def client(self, user: str = "admin") -> Any:
        """An official-client ApiClient (CA verified, client certificate)."""
        from kubernetes import config

        return config.new_client_from_config_dict(self.kubeconfig(user))

    def kubectl_env(self, user: str = "admin") -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.identities[user].kubeconfig_path)}

    def logs(self, component: str, lines: int = 40) -> str:
        return self.components[component].tail(lines)

    # ------------------------------------------------------------------ PKI and identities
    def _path(self, *parts: str) -> Path:
        assert self.workdir is not None
        return self.workdir.joinpath(*parts)

    def _write_private(self, name: str, data: bytes) -> Path:
        p = self._path("pki", name)
        kc.write_private(p, data.decode())
        return p

    def _write_pki(self) -> None:
        self._ca = Authority.create("budcluster-real-ca")
        self._write_private("ca.crt", self._ca.cert_pem)
        cert, key = self._ca.issue("kube-apiserver", hosts=["kubernetes", "kubernetes.default"], server=True)
        self._write_private("apiserver.crt", cert)
        self._write_private("apiserver.key", key)
        # Service-account tokens are signed with RSA (the controller-manager and API server share the pair).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._write_private(
            "sa.key",
            sa.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        self._write_private(
            "sa.pub",
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        # The API server's client identity towards kubelets (here: KWOK's optional server; never dialled).
        cert, key = self._ca.issue(
            "kube-apiserver-kubelet-client", orgs=("kubeadm:cluster-admins",), client=True
        )
        self._write_private("apiserver-kubelet-client.crt", cert)
        self._write_private("apiserver-kubelet-client.key", key)
        for user, cn, orgs in (
            ("admin", "budcluster-admin", ("system:masters",)),
            ("kube-controller-manager", "system:kube-controller-manager", ()),
            ("kube-scheduler", "system:kube-scheduler", ()),
            # KWOK plays every kubelet and the volume provisioner, so it needs more than one node's rights.
            ("kwok", "kwok", ("system:masters",)),
            ("agent", "budcluster-devcluster-agent", ("system:masters",)),
            # An authenticated user with no role at all: the starting point for least-privilege tests.
            ("nobody", "budcluster-nobody", ()),
        ):
            cert, key = self._ca.issue(cn, orgs=orgs, client=True)
            ident = Identity(user, cert, key, self._path("kubeconfig", f"{user}.yaml"))
            self.identities[user] = ident
        # Files written after the API server port is known (see _start_apiserver).

    def _write_kubeconfigs(self) -> None:
        for user in self.identities:
            self.write_kubeconfig(self.identities[user].kubeconfig_path, user)

    # ------------------------------------------------------------------ components
    def _bin(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    def _launch(self, name: str, argv: list[str]) -> Component:
        comp = Component(name, [self._bin(name), *argv], self._path("logs", f"{name}.log"))
        self.components[name] = comp
        comp.start(env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)})
        return comp

    def _start_etcd(self, deadline: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        comp = self._launch(
            "etcd",
            [
                "--name=budcluster",
                f"--data-dir={self._path('etcd')}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=budcluster=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throwaway test store: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ],
        )
        self._wait(comp, lambda: _http_ok(f"{self.etcd_url}/health"), deadline, "etcd /health")

    def _start_apiserver(self, deadline: float) -> None:
        self.port = free_port()
        pki = lambda name: str(self._path("pki", name))  # noqa: E731
        comp = self._launch(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                # Loopback as the advertised address keeps the API server off every other interface; the
                # endpoint reconciler refuses loopback, and nothing in a KWOK cluster dials the `kubernetes`
                # Service from a pod, so it is off.
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.port}",
                f"--cert-dir={self._path('apiserver-certs')}",
                f"--tls-cert-file={pki('apiserver.crt')}",
                f"--tls-private-key-file={pki('apiserver.key')}",
                f"--client-ca-file={pki('ca.crt')}",
                f"--kubelet-client-certificate={pki('apiserver-kubelet-client.crt')}",
                f"--kubelet-client-key={pki('apiserver-kubelet-client.key')}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={pki('sa.pub')}",
                f"--service-account-signing-key-file={pki('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # The default admission chain (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity,
                # DefaultStorageClass, ResourceQuota, webhooks, ...) plus NodeRestriction, as kubeadm runs it.
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
            ],
        )
        ca = ssl.create_default_context(cafile=str(self._path("pki", "ca.crt")))
        self._write_kubeconfigs()
        admin = self.identities["admin"]
        cert = self._write_private("admin.crt", admin.cert_pem)
        key = self._write_private("admin.key", admin.key_pem)
        ca.load_cert_chain(str(cert), str(key))
        self._ssl = ca
        self._wait(comp, lambda: _http_ok(f"{self.url}/readyz", ca), deadline, "kube-apiserver /readyz")

    def _start_controllers(self) -> None:
        pki = lambda name: str(self._path("pki", name))  # noqa: E731
        kcm = str(self.identities["kube-controller-manager"].kubeconfig_path)
        self._launch(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki('sa.key')}",
                f"--root-ca-file={pki('ca.crt')}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                # Resync quickly enough for tests: a deleted namespace is gone in seconds, as on a small cluster.
                "--concurrent-namespace-syncs=4",
            ],
        )
        sched = str(self.identities["kube-scheduler"].kubeconfig_path)
        self._launch(
            "kube-scheduler",
            [
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )
        self._launch(
            "kwok",
            [
                f"--kubeconfig={self.identities['kwok'].kubeconfig_path}",
                f"--config={self._write_kwok_config()}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                f"--cidr={POD_CIDR_PREFIX}.255.0/24",
                "--node-lease-duration-seconds=40",
            ],
        )

    def _write_kwok_config(self) -> Path:
        """KWOK's configuration: its own published stages (copied next to the binaries by build_k8s.sh)."""
        assert self.bin_dir is not None
        src = stages_dir(self.bin_dir)
        docs = sorted(src.glob("*.yaml"))
        if not docs:
            raise ControlPlaneError(f"no KWOK stages in {src}: run `make k8s`")
        path = self._path("kwok.yaml")
        path.write_text("\n---\n".join(p.read_text() for p in docs))
        return path

    def _create_nodes(self) -> None:
        from kubernetes import client as k8s

        api = self.client()
        try:
            core = k8s.CoreV1Api(api)
            nodes = self.nodes if isinstance(self.nodes, list) else load_nodes(self.nodes or "gpu-mixed")
            for index, node in enumerate(nodes):
                node = copy.deepcopy(node)
                self.hardware[node["metadata"]["name"]] = node.pop(HARDWARE_KEY, None) or {}
                kwok_node(node, index)
                core.create_node(node)
            storage = k8s.StorageV1Api(api)
            storage.create_storage_class(
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {
                        "name": STORAGE_CLASS,
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                    },
                    "provisioner": "kwok.x-k8s.io/volume",
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",
                }
            )
        finally:
            api.close()

    def _wait_settled(self, deadline: float) -> None:
        """Every node Ready (KWOK's heartbeats) and the `default` ServiceAccount created by the controller-manager
        (pods cannot be created in a namespace before it exists)."""
        from kubernetes import client as k8s

        api = self.client()
        try:
            core = k8s.CoreV1Api(api)

            def nodes_ready() -> bool:
                items = core.list_node().items
                return bool(items) and all(
                    any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
                    for n in items
                )

            def default_account() -> bool:
                core.read_namespaced_service_account("default", "default")  # 404 until it exists
                return True

            self._wait(self.components["kwok"], nodes_ready, deadline, "every node Ready (KWOK)")
            self._wait(
                self.components["kube-controller-manager"],
                default_account,
                deadline,
                "the default ServiceAccount",
            )
        finally:
            api.close()

    def _wait(self, comp: Component, check: Any, deadline: float, what: str) -> None:
        while True:
            if not comp.alive():
                raise ControlPlaneError(f"{comp.name} exited while waiting for {what}:\n{comp.tail()}")
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {what}; {comp.name} log:\n{comp.tail()}")
            time.sleep(0.1)


def kwok_node(node: dict, index: int) -> dict:
    """Make a preset Node one KWOK manages: its annotation, a loopback address and a loopback pod CIDR."""
    meta = node.setdefault("metadata", {})
    meta.setdefault("annotations", {})[KWOK_ANNOTATION] = "fake"
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    spec = node.setdefault("spec", {})
    cidr = f"{POD_CIDR_PREFIX}.{index % 255}.0/24"
    spec["podCIDR"], spec["podCIDRs"] = cidr, [cidr]
    spec.pop("providerID", None)
    status = node.setdefault("status", {})
    status["addresses"] = [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": meta["name"]},
    ]
    # KWOK writes its own conditions and heartbeats (and the node lifecycle controller watches the leases).
    status.pop("conditions", None)
    status.pop("daemonEndpoints", None)
    return node


def _kubeconfig_doc(name: str, server: str, ca_pem: bytes, user: str, creds: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user, "namespace": "default"}}],
        "current-context": name,
    }


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
