"""What a real cluster's node agents and cloud controller would do, for a control plane without kubelets.

KWOK moves pods through their phases; it runs no containers.  Three things a user's cluster does by running
containers are needed by BudCluster's lifecycle, and this agent does them from outside, with the official
client, as the cluster's own components would:

- **Feature discovery.**  When a collector pod (NFD worker, GPU feature discovery, AMD labeller) is Running on
  a node, the node gets the labels that collector publishes on real hardware, computed from the node's
  hardware description by the same functions the emulator uses (``devcluster.sim.hardware``).
- **LoadBalancer Services** (like cloud-provider-kind or MetalLB): each gets a loopback address from the
  emulator's pool, a listener on every port, and ``status.loadBalancer.ingress``.  A request goes to a Ready
  pod of the Service (round robin) and is answered by that pod's inference simulator, so endpoint checks and
  benchmarks work end to end.
- Serving pods (vLLM images) get an inference simulator built from their container args and their node's
  hardware when they are Running.

Watches run on threads (list, then watch from the list's resourceVersion; a 410 relists); listeners run on an
asyncio loop of their own thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devcluster.sim import hardware
from devcluster.sim.inference import InferenceServer
from devcluster.sim.kubelet import is_serving_image
from devcluster.sim.network import POOL
from devcluster.sim.objects import match_label_selector, pod_is_ready

if TYPE_CHECKING:
    from devcluster.real.controlplane import ControlPlane

log = logging.getLogger(__name__)

LB_POOL_PREFIX = "127.0.2."  # the emulator's pool starts at 127.0.1.x; both can run in one process


class Agent:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.stopping = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.pods: dict[tuple[str, str], dict] = {}
        self.labelled: set[str] = set()  # pod uids whose collector labels were applied
        self.servers: dict[str, InferenceServer] = {}  # pod uid -> simulator
        self.lbs: dict[tuple[str, str], tuple[str, list[int]]] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.rr = itertools.count()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.api = cp.client("agent")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop_thread = threading.Thread(target=self.loop.run_forever, name="real-agent-loop", daemon=True)
        loop_thread.start()
        self.threads.append(loop_thread)
        for name, target in (("pods", self._watch_pods), ("services", self._watch_services)):
            t = threading.Thread(target=self._run_watch, args=(name, target), name=f"real-agent-{name}")
            t.daemon = True
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            lbs = list(self.lbs.values())
            self.lbs.clear()
        for ip, ports in lbs:
            POOL.release(ip, ports)
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(POOL.close_loop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        for server in self.servers.values():
            server.close()
        self.api.close()

    def _run_watch(self, name: str, target: Any) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not self.stopping.is_set():
            try:
                target()
            except (ApiException, HTTPError, OSError) as exc:
                if self.stopping.is_set():
                    return
                log.debug("agent %s watch restarts: %s", name, exc)
                self.stopping.wait(0.5)
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("agent %s watch failed; restarting", name)
                self.stopping.wait(1.0)

    def _stream(self, list_fn: Any, handle: Any) -> None:
        """List, hand every object to `handle`, then watch from the list's resourceVersion until it expires."""
        from kubernetes import watch

        listing = list_fn(_preload_content=False)
        body = json.loads(listing.data)
        for item in body.get("items") or []:
            handle("ADDED", item)
        rv = body["metadata"]["resourceVersion"]
        w = watch.Watch()
        for event in w.stream(
            list_fn,
            resource_version=rv,
            timeout_seconds=60,
            allow_watch_bookmarks=True,
            _preload_content=False,
        ):
            if self.stopping.is_set():
                w.stop()
                return
            if event["type"] == "BOOKMARK":
                continue
            if event["type"] == "ERROR":
                return  # 410 Gone: relist
            handle(event["type"], event["raw_object"])

    # ------------------------------------------------------------------ pods: collectors and simulators
    def _watch_pods(self) -> None:
        from kubernetes import client as k8s

        self._stream(k8s.CoreV1Api(self.api).list_pod_for_all_namespaces, self._pod_event)

    def _pod_event(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        uid = meta.get("uid", "")
        if kind == "DELETED":
            with self.lock:
                self.pods.pop(key, None)
                server = self.servers.pop(uid, None)
            if server is not None:
                server.close()
            return
        with self.lock:
            self.pods[key] = pod
        status = pod.get("status") or {}
        node_name = (pod.get("spec") or {}).get("nodeName")
        if status.get("phase") != "Running" or not node_name or meta.get("deletionTimestamp"):
            return
        if uid not in self.labelled:
            self.labelled.add(uid)
            self._label_node(pod, node_name)
        if uid not in self.servers:
            for c in pod["spec"].get("containers") or ():
                if is_serving_image(c.get("image", "")):
                    self.servers[uid] = InferenceServer.for_pod(
                        pod, c, self.cp.hardware.get(node_name), self.cp.sim_config
                    )
                    break

    def _label_node(self, pod: dict, node_name: str) -> None:
        from kubernetes import client as k8s

        core = k8s.CoreV1Api(self.api)
        node_obj = json.loads(core.read_node(node_name, _preload_content=False).data)
        labels = hardware.collector_labels(pod, self.cp.hardware.get(node_name) or {}, node_obj)
        if labels:
            core.patch_node(node_name, {"metadata": {"labels": labels}})

    # ------------------------------------------------------------------ services: LoadBalancer stand-in
    def _watch_services(self) -> None:
        from kubernetes import client as k8s

        self._stream(k8s.CoreV1Api(self.api).list_service_for_all_namespaces, self._service_event)

    def _service_event(self, kind: str, svc: dict) -> None:
        meta = svc["metadata"]
        key = (meta["namespace"], meta["name"])
        is_lb = (svc.get("spec") or {}).get("type") == "LoadBalancer"
        if kind == "DELETED" or not is_lb:
            with self.lock:
                self.services.pop(key, None)
                current = self.lbs.pop(key, None)
            if current is not None:
                POOL.release(*current)
            return
        with self.lock:
            self.services[key] = svc
        ports = sorted({int(p["port"]) for p in svc["spec"].get("ports") or () if p.get("port")})
        with self.lock:
            current = self.lbs.get(key)
        if current is not None and current[1] != ports:
            POOL.release(*current)
            current = None
        if current is None:
            ip = POOL.allocate(LB_POOL_PREFIX, ports)
            if ip is None:
                log.warning("agent: no loopback address left for Service %s/%s", *key)
                return
            current = (ip, ports)
            with self.lock:
                self.lbs[key] = current
            for port in ports:
                asyncio.run_coroutine_threadsafe(POOL.listen(ip, port, self._handler(key)), self.loop).result(
                    10
                )
        want = [{"ip": current[0], "ipMode": "VIP"}]
        if ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") != want:
            from kubernetes import client as k8s

            k8s.CoreV1Api(self.api).patch_namespaced_service_status(
                key[1], key[0], {"status": {"loadBalancer": {"ingress": want}}}
            )

    def _handler(self, key: tuple[str, str]) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, key)

        return handler

    async def serve(self, request: web.Request, key: tuple[str, str]) -> web.StreamResponse:
        with self.lock:
            svc = self.services.get(key)
            pods = list(self.pods.values())
        if svc is None:
            return web.Response(status=503, text="no backend for this address\n")
        selector = (svc.get("spec") or {}).get("selector") or {}
        ready = [
            p
            for p in pods
            if selector
            and p["metadata"]["namespace"] == key[0]
            and match_label_selector({"matchLabels": selector}, p["metadata"].get("labels"))
            and (p.get("status") or {}).get("phase") == "Running"
            and pod_is_ready(p)
            and not p["metadata"].get("deletionTimestamp")
        ]
        if not ready:
            return web.Response(status=503, text=f"no ready endpoints for Service {key[0]}/{key[1]}\n")
        pod = ready[next(self.rr) % len(ready)]
        server = self.servers.get(pod["metadata"].get("uid", ""))
        if server is None:
            return web.Response(text=f"pod {key[0]}/{pod['metadata']['name']} answered\n")
        return await server.handle(request, request.path.lstrip("/"))
