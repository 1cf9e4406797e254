"""Simulated cluster behaviour behind the emulated API: nodes, scheduler, kubelet, controllers, networking,
storage and an inference simulator.

The API server calls `attach()` once per virtual cluster.  Everything then runs on the server's event loop,
driven by the store's change feed (see `core.Simulation`), so an idle cluster costs no CPU.

Public interface (the contract with the API server):
    SimConfig                                   timings and global overrides
    load_nodes(spec) -> list[dict]              preset name or YAML file of Node objects
    attach(cluster, config, nodes) -> None      create nodes + defaults, start the controllers
    detach(cluster) -> None                     stop a cluster's timers and listeners
    await shutdown()                            close every LoadBalancer listener of the running loop
    await proxy_service(cluster, ns, svc, port, path, request) -> StreamResponse
    await proxy_pod(cluster, ns, pod, port, path, request) -> StreamResponse   (e.g. a pod's /metrics)
    await set_fault(cluster, kind, target, value) -> None   "node-not-ready", "job-fail", "clear"
    cluster.sim.pod_log(ns, pod, container) -> str | None   for the pods/log endpoint
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from devcluster.sim.config import SimConfig
from devcluster.sim.core import Simulation
from devcluster.sim.network import POOL
from devcluster.sim.objects import controller_of
from devcluster.sim.presets import HARDWARE_KEY, load_nodes, preset_names

__all__ = [
    "SimConfig",
    "Simulation",
    "attach",
    "detach",
    "load_nodes",
    "preset_names",
    "proxy_pod",
    "proxy_service",
    "set_fault",
    "shutdown",
]


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


def attach(cluster: Any, config: SimConfig | None, nodes: list[dict]) -> None:
    """Create `nodes` in `cluster` and start simulating it.  `nodes` is not modified (it may be shared)."""
    if cluster.loop is None:
        cluster.loop = asyncio.get_event_loop()
    hardware: dict[str, dict] = {}
    for node in nodes:
        node = _copy(node)
        hw = node.pop(HARDWARE_KEY, None)
        name = node["metadata"]["name"]
        hardware[name] = hw or {}
        if cluster.peek("nodes", None, name) is None:
            cluster.create("nodes", node)
    sim = Simulation(cluster, config or SimConfig(), hardware)
    cluster.sim = sim
    # Pods started before an API server restart (restored state) are taken over where they are, not restarted.
    for pod in cluster.list("pods"):
        sim.kubelet.resume(pod)
    sim.storage.ensure_default_class()
    sim.network.ensure_kubernetes_service()
    cluster.subscribe(sim.on_change)
    # Objects that existed before the simulation started (e.g. restored state) get reconciled once.
    for key in (
        "deployments.apps",
        "daemonsets.apps",
        "statefulsets.apps",
        "jobs.batch",
        "replicasets.apps",
        "services",
        "persistentvolumeclaims",
        "pods",
    ):
        for obj in cluster.iter_objects(key):
            sim.on_change("ADDED", key, obj)


def detach(cluster: Any) -> None:
    sim = getattr(cluster, "sim", None)
    if not isinstance(sim, Simulation):
        return
    unsubscribe = getattr(cluster, "unsubscribe", None)
    if unsubscribe is not None:
        unsubscribe(sim.on_change)
    for key in list(sim.kubelet.timers):
        sim.kubelet.forget(*key)
    for ns, name in list(sim.workloads.transfers):
        sim.workloads._stop_transfer(ns, name)
    sim.network.close()
    cluster.sim = None


async def shutdown() -> None:
    """Close the LoadBalancer / ingress listeners opened on the running loop (call on server stop)."""
    await POOL.close_loop()


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


async def proxy_service(
    cluster: Any, namespace: str, service: str, port: str, path: str, request: web.BaseRequest
) -> web.StreamResponse:
    """The API server's services/proxy: answer as a Ready pod behind the Service would."""
    sim = getattr(cluster, "sim", None)
    if service in ("http", "https") and port:
        # "<scheme>:<name>:<port>" form: the caller split off the scheme as the name.
        service, _, port = port.partition(":")
    if not isinstance(sim, Simulation):
        return _status(503, "ServiceUnavailable", f'no endpoints available for service "{service}"')
    return await sim.network.serve(request, namespace, service, port, path)


async def proxy_pod(
    cluster: Any, namespace: str, pod: str, port: str, path: str, request: web.BaseRequest
) -> web.StreamResponse:
    """The API server's pods/proxy: the pod's own server answers (a serving pod's inference simulator, which is how
    BudCluster reads each replica's Prometheus ``/metrics``); a pod that is not running is refused as kube-apiserver
    refuses it."""
    sim = getattr(cluster, "sim", None)
    if not isinstance(sim, Simulation):
        return _status(503, "ServiceUnavailable", f'pod "{pod}" is not serving')
    obj = cluster.peek("pods", namespace, pod)
    if obj is None:
        return _status(404, "NotFound", f'pods "{pod}" not found')
    if (obj.get("status") or {}).get("phase") != "Running":
        return _status(400, "BadRequest", f"pod {pod} does not have a host assigned or is not running")
    server = sim.inference.get((namespace, pod))
    if server is None:
        return _status(
            503, "ServiceUnavailable", f'error trying to reach service: pod "{pod}" serves nothing'
        )
    return await server.handle(request, path)


async def set_fault(cluster: Any, kind: str, target: str | None, value: Any = True) -> None:
    """Node and Job faults: "node-not-ready" (target node, all workers when None), "job-fail" (target
    "ns/name", "name", or every Job when None), "clear" (target a node, a Job, or everything)."""
    sim = getattr(cluster, "sim", None)
    if not isinstance(sim, Simulation):
        return
    on = value not in (False, "false", "False", 0, "0")
    if kind == "node-not-ready":
        for name in _fault_nodes(cluster, target):
            sim.set_node_ready(name, not on)
    elif kind in ("node-ready",):
        for name in _fault_nodes(cluster, target):
            sim.set_node_ready(name, True)
    elif kind == "job-fail":
        key = target or "*"
        if on:
            sim.job_faults.add(key)
            _fail_running_job_pods(sim)
        else:
            sim.job_faults.discard(key)
    elif kind == "clear" and target == "job-fail":
        sim.job_faults.clear()
    elif kind == "clear" and target == "node-not-ready":
        await set_fault(cluster, "clear", None, value)
    elif kind == "clear":
        if target is None:
            sim.job_faults.clear()
        else:
            sim.job_faults.discard(target)
        names = (
            [target]
            if target and cluster.peek("nodes", None, target)
            else ([] if target else [n["metadata"]["name"] for n in cluster.iter_objects("nodes")])
        )
        for name in names:
            node = cluster.peek("nodes", None, name)
            ready = next(
                (c for c in (node.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"),
                None,
            )
            if ready is not None and ready.get("status") != "True":
                sim.set_node_ready(name, True)
    else:
        from devcluster.store import ApiError

        raise ApiError(400, "BadRequest", f"unknown fault kind {kind!r}")


def _fault_nodes(cluster: Any, target: str | None) -> list[str]:
    if target:
        return [target]
    return [
        n["metadata"]["name"]
        for n in cluster.iter_objects("nodes")
        if "node-role.kubernetes.io/control-plane" not in (n["metadata"].get("labels") or {})
    ]


def _fail_running_job_pods(sim: Simulation) -> None:
    """Pods of faulted Jobs fail now instead of at the end of their run."""
    for pod in sim.cluster.list("pods"):
        ref = controller_of(pod)
        if (
            ref
            and ref.get("kind") == "Job"
            and (pod.get("status") or {}).get("phase") == "Running"
            and sim.job_fault_for(pod)
        ):
            sim.kubelet._finish(pod)
