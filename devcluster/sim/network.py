"""Service networking: cluster IPs, node ports, Endpoints, LoadBalancer addresses with real listeners,
Ingress status, and the API server's service proxy.

- Services get a clusterIP from 10.96.0.0/16 (10.96.0.1 is the `kubernetes` Service) and NodePort /
  LoadBalancer ports get nodePorts from 30000-32767, allocated per virtual cluster.
- Endpoints follow the Service selector: Running pods with an IP, Ready ones under `addresses`, the others
  under `notReadyAddresses`, ports resolved through named targetPorts.
- LoadBalancer Services get `status.loadBalancer.ingress[0].ip` from a process-wide loopback pool
  (127.0.1.1-254, like MetalLB; one address is shared by Services whose ports differ, as MetalLB's
  allow-shared-ip does) and a plain-HTTP listener on `<ip>:<port>`.  Ingresses get the cluster's ingress
  address from the same pool, where a listener on `ingress_port` routes by host and path.
- A request reaching a Service picks a Ready endpoint pod round-robin and is answered by that pod's
  inference simulator; pods that run no simulated server answer a small text page.  All listeners share one
  aiohttp application; the accepting socket's own address tells which Service a request is for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devcluster.sim.objects import match_label_selector, pod_is_ready, pod_is_terminal

if TYPE_CHECKING:
    from devcluster.sim.core import Simulation

log = logging.getLogger(__name__)

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
NODE_PORT_RANGE = range(30000, 32768)


def _status_response(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class LoadBalancerPool:
    """Loopback addresses handed to LoadBalancer Services and ingress controllers, with their listeners.

    Addresses are process-wide (two clusters cannot bind one ip:port); listeners belong to the event loop
    that opened them, so several devcluster servers (each on its own loop) can coexist in one process.
    """

    def __init__(self) -> None:
        self.ports: dict[str, set[int]] = {}  # ip -> ports in use
        self.routes: dict[tuple[str, int], Any] = {}  # (ip, port) -> async handler(request)
        self.sites: dict[tuple[str, int], tuple[asyncio.AbstractEventLoop, web.TCPSite]] = {}
        self.runners: dict[asyncio.AbstractEventLoop, web.AppRunner] = {}
        self.locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def allocate(
        self, prefix: str, ports: list[int], preferred: str | None = None, probe: bool = True
    ) -> str | None:
        candidates = ([preferred] if preferred else []) + [f"{prefix}{i}" for i in range(1, 255)]
        for ip in candidates:
            used = self.ports.get(ip, set())
            if used & set(ports) or (probe and not _bindable(ip, ports)):
                continue
            self.ports.setdefault(ip, set()).update(ports)
            return ip
        return None

    def release(self, ip: str, ports: list[int]) -> None:
        used = self.ports.get(ip)
        if used is not None:
            used.difference_update(ports)
            if not used:
                del self.ports[ip]
        for port in ports:
            self.routes.pop((ip, port), None)
            entry = self.sites.pop((ip, port), None)
            if entry is not None and not entry[0].is_closed():
                entry[0].create_task(entry[1].stop())

    async def _ensure_runner(self) -> web.AppRunner:
        loop = asyncio.get_running_loop()
        lock = self.locks.setdefault(loop, asyncio.Lock())
        async with lock:
            runner = self.runners.get(loop)
            if runner is None:
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self._dispatch)
                runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
                await runner.setup()
                self.runners[loop] = runner
        return runner

    async def listen(self, ip: str, port: int, handler: Any) -> bool:
        self.routes[(ip, port)] = handler
        if (ip, port) in self.sites:
            return True
        runner = await self._ensure_runner()
        site = web.TCPSite(runner, ip, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.warning("devcluster: cannot listen on %s:%s for a load balancer: %s", ip, port, exc)
            return False
        if (ip, port) not in self.routes:  # released while the socket was opening
            await site.stop()
            return False
        self.sites[(ip, port)] = (asyncio.get_running_loop(), site)
        return True

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        handler = self.routes.get((sock[0], sock[1])) if sock else None
        if handler is None:
            return web.Response(status=503, text="no backend for this address\n")
        return await handler(request)

    async def close_loop(self) -> None:
        """Stop every listener opened on the running loop (server shutdown)."""
        loop = asyncio.get_running_loop()
        for key, (site_loop, site) in list(self.sites.items()):
            if site_loop is loop:
                del self.sites[key]
                await site.stop()
        runner = self.runners.pop(loop, None)
        self.locks.pop(loop, None)
        if runner is not None:
            await runner.cleanup()


def _bindable(ip: str, ports: list[int]) -> bool:
    """Whether ip:port is free on this host: another process (say, a second test run) may hold it."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError:
                return False
    return True


POOL = LoadBalancerPool()


class Network:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cluster = sim.cluster
        self.ip_cursor = 1
        self.node_port_cursor = NODE_PORT_RANGE.start
        self.rr = itertools.count()
        self.lb: dict[tuple[str, str], tuple[str, list[int]]] = {}  # service -> (ip, ports)
        self.ingress_ip: str | None = None
        self.tasks: set[asyncio.Task] = set()

    def _spawn(self, coro: Any) -> None:
        # Keep a reference until done: the loop holds tasks only weakly.
        task = self.sim.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ allocation
    def _used_ips(self) -> set[str]:
        return {(s.get("spec") or {}).get("clusterIP") for s in self.cluster.iter_objects("services")} - {
            None
        }

    def allocate_cluster_ip(self) -> str:
        used = self._used_ips()
        hosts = SERVICE_CIDR.num_addresses - 2
        for _ in range(hosts):
            self.ip_cursor = self.ip_cursor % hosts + 1
            ip = str(SERVICE_CIDR.network_address + self.ip_cursor)
            if ip not in used and ip != "10.96.0.1" and ip != "10.96.0.10":
                return ip
        raise RuntimeError("service IP range exhausted")

    def _allocate_node_port(self) -> int:
        used = {
            p.get("nodePort")
            for s in self.cluster.iter_objects("services")
            for p in (s.get("spec") or {}).get("ports") or ()
        }
        for _ in range(len(NODE_PORT_RANGE)):
            port = self.node_port_cursor
            self.node_port_cursor = port + 1 if port + 1 < NODE_PORT_RANGE.stop else NODE_PORT_RANGE.start
            if port not in used:
                return port
        raise RuntimeError("node port range exhausted")

    def ensure_kubernetes_service(self, api_port: int = 443) -> None:
        if self.cluster.peek("services", "default", "kubernetes") is not None:
            return
        self.sim.create(
            "services",
            {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.96.0.1",
                    "clusterIPs": ["10.96.0.1"],
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                    "ports": [{"name": "https", "port": api_port, "protocol": "TCP", "targetPort": 6443}],
                },
            },
        )

    # ------------------------------------------------------------------ services
    def reconcile_service(self, ns: str, name: str) -> None:
        svc = self.cluster.get("services", ns, name)
        if svc is None or svc["metadata"].get("deletionTimestamp"):
            return
        spec = svc.setdefault("spec", {})
        stype = spec.get("type") or "ClusterIP"
        changed = False
        if stype != "ExternalName" and not spec.get("clusterIP"):
            ip = self.allocate_cluster_ip()
            spec.update(clusterIP=ip, clusterIPs=[ip], ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack")
            changed = True
        for key, default in (
            ("type", "ClusterIP"),
            ("sessionAffinity", "None"),
            ("internalTrafficPolicy", "Cluster"),
        ):
            if key not in spec and stype != "ExternalName":
                spec[key] = default
                changed = True
        for port in spec.get("ports") or ():
            if "protocol" not in port:
                port["protocol"] = "TCP"
                changed = True
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]
                changed = True
            if stype in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
                port["nodePort"] = self._allocate_node_port()
                changed = True
        if stype in ("NodePort", "LoadBalancer") and "externalTrafficPolicy" not in spec:
            spec["externalTrafficPolicy"] = "Cluster"
            changed = True
        if changed:
            svc["metadata"].pop("resourceVersion", None)
            svc = self.sim.write("services", svc) or svc
        if stype == "LoadBalancer":
            self._ensure_lb(svc)
        elif (ns, name) in self.lb:
            ip, ports = self.lb.pop((ns, name))
            POOL.release(ip, ports)

    def _ensure_lb(self, svc: dict) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        ports = sorted({int(p["port"]) for p in svc["spec"].get("ports") or () if p.get("port")})
        current = self.lb.get((ns, name))
        if current is not None and current[1] != ports:
            POOL.release(*current)
            current = None
        if current is None:
            requested = (
                svc["spec"].get("loadBalancerIP")
                or (svc["metadata"].get("annotations") or {}).get("metallb.universe.tf/loadBalancerIPs")
                or _status_ip(svc)  # a restored Service keeps the address its clients were given
            )
            ip = POOL.allocate(self.sim.config.lb_pool_prefix, ports, requested, self.sim.config.lb_listen)
            if ip is None:
                self.sim.event(
                    svc,
                    "AllocationFailed",
                    "Failed to allocate IP: no available IPs",
                    "Warning",
                    source="metallb-controller",
                )
                return
            current = self.lb[(ns, name)] = (ip, ports)
            self.sim.event(svc, "IPAllocated", f'Assigned IP ["{ip}"]', source="metallb-controller")
            if self.sim.config.lb_listen:
                for port in ports:
                    self._spawn(POOL.listen(ip, port, self._service_handler(ns, name, port)))
        ip = current[0]
        want = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
        if (svc.get("status") or {}).get("loadBalancer") != want["loadBalancer"]:
            svc["status"] = {**(svc.get("status") or {}), **want}
            svc["metadata"].pop("resourceVersion", None)
            self.sim.write_status("services", svc)

    def service_deleted(self, svc: dict) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        current = self.lb.pop((ns, name), None)
        if current is not None:
            POOL.release(*current)
        if self.cluster.peek("endpoints", ns, name) is not None:
            self.sim.loop.call_soon(self.sim.delete, "endpoints", ns, name)

    def close(self) -> None:
        for ip, ports in self.lb.values():
            POOL.release(ip, ports)
        self.lb.clear()
        if self.ingress_ip:
            POOL.release(self.ingress_ip, [self.sim.config.ingress_port])
            self.ingress_ip = None

    # ------------------------------------------------------------------ endpoints
    def reconcile_endpoints(self, ns: str, name: str) -> None:
        services = (
            self.cluster.list("services", ns)
            if name == "*"
            else [s for s in [self.cluster.get("services", ns, name)] if s]
        )
        if not services:
            return
        pods = [
            p
            for p in self.cluster.iter_objects("pods", ns)
            if (p.get("status") or {}).get("podIP")
            and not pod_is_terminal(p)
            and not p["metadata"].get("deletionTimestamp")
        ]
        for svc in services:
            selector = (svc.get("spec") or {}).get("selector")
            if not selector:
                continue  # Endpoints of selector-less Services are managed by their owner
            members = [
                p
                for p in pods
                if match_label_selector({"matchLabels": selector}, p["metadata"].get("labels"))
            ]
            self._write_endpoints(svc, members)

    def _write_endpoints(self, svc: dict, pods: list[dict]) -> None:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        ready, not_ready = [], []
        for p in sorted(pods, key=lambda p: p["status"]["podIP"]):
            addr = {
                "ip": p["status"]["podIP"],
                "nodeName": p["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": p["metadata"]["name"],
                    "uid": p["metadata"]["uid"],
                },
            }
            (ready if pod_is_ready(p) else not_ready).append(addr)
        ports = []
        for sp in (svc.get("spec") or {}).get("ports") or ():
            target = resolve_target_port(sp, pods[0] if pods else None)
            entry = {"port": target, "protocol": sp.get("protocol", "TCP")}
            if sp.get("name"):
                entry["name"] = sp["name"]
            ports.append(entry)
        subsets = []
        if ready or not_ready:
            subset: dict[str, Any] = {"ports": ports}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets.append(subset)
        current = self.cluster.get("endpoints", ns, name)
        labels = dict(svc["metadata"].get("labels") or {})
        if current is None:
            body = {"metadata": {"name": name, "namespace": ns, "labels": labels}}
            if subsets:
                body["subsets"] = subsets
            self.sim.create("endpoints", body)
            return
        if (current.get("subsets") or []) == subsets and (current["metadata"].get("labels") or {}) == labels:
            return
        current["metadata"]["labels"] = labels
        if subsets:
            current["subsets"] = subsets
        else:
            current.pop("subsets", None)
        current["metadata"].pop("resourceVersion", None)
        self.sim.write("endpoints", current)

    # ------------------------------------------------------------------ ingress
    def reconcile_ingress(self, ns: str, name: str) -> None:
        ingresses = (
            self.cluster.list("ingresses.networking.k8s.io", ns)
            if name == "*"
            else [i for i in [self.cluster.get("ingresses.networking.k8s.io", ns, name)] if i]
        )
        if not ingresses:
            return
        if self.ingress_ip is None:
            port = self.sim.config.ingress_port
            shown = next((ip for ip in map(_status_ip, ingresses) if ip), None)  # restored: keep it
            ip = POOL.allocate(self.sim.config.lb_pool_prefix, [port], shown, self.sim.config.lb_listen)
            if ip is None:
                return
            self.ingress_ip = ip
            if self.sim.config.lb_listen:
                self._spawn(POOL.listen(ip, port, self._ingress_handler))
        want = {"ingress": [{"ip": self.ingress_ip}]}
        for ing in ingresses:
            if ((ing.get("status") or {}).get("loadBalancer") or {}) != want:
                ing["status"] = {"loadBalancer": want}
                ing["metadata"].pop("resourceVersion", None)
                self.sim.write_status("ingresses.networking.k8s.io", ing)

    def _match_ingress(self, host: str, path: str) -> tuple[str, str, Any] | None:
        best: tuple[int, tuple[str, str, Any]] | None = None
        for ing in self.cluster.iter_objects("ingresses.networking.k8s.io"):
            ns = ing["metadata"]["namespace"]
            spec = ing.get("spec") or {}
            for rule in spec.get("rules") or ():
                if rule.get("host") and rule["host"] != host:
                    continue
                for p in (rule.get("http") or {}).get("paths") or ():
                    prefix = p.get("path") or "/"
                    exact = p.get("pathType") == "Exact"
                    if (exact and path != prefix) or (
                        not exact and not path.startswith(prefix.rstrip("/") or "/")
                    ):
                        continue
                    svc = (p.get("backend") or {}).get("service") or {}
                    port = (svc.get("port") or {}).get("number") or (svc.get("port") or {}).get("name")
                    score = len(prefix) + (1000 if rule.get("host") else 0)
                    if best is None or score > best[0]:
                        best = (score, (ns, svc.get("name", ""), port))
            default = (spec.get("defaultBackend") or {}).get("service") or {}
            if best is None and default.get("name"):
                port = (default.get("port") or {}).get("number") or (default.get("port") or {}).get("name")
                best = (0, (ns, default["name"], port))
        return best[1] if best else None

    async def _ingress_handler(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").split(":")[0]
        target = self._match_ingress(host, request.path)
        if target is None:
            return web.Response(status=404, text="404 page not found\n")
        ns, svc, port = target
        return await self.serve(request, ns, svc, str(port or ""), request.path.lstrip("/"))

    # ------------------------------------------------------------------ routing to pods
    def _service_handler(self, ns: str, name: str, port: int) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, ns, name, str(port), request.path.lstrip("/"))

        return handler

    def service_port(self, svc: dict, port: str) -> dict | None:
        ports = (svc.get("spec") or {}).get("ports") or []
        if not port:
            return ports[0] if ports else None
        for p in ports:
            if str(p.get("port")) == port or p.get("name") == port:
                return p
        return None

    async def serve(
        self, request: web.BaseRequest, ns: str, name: str, port: str, path: str
    ) -> web.StreamResponse:
        svc = self.cluster.get("services", ns, name)
        if svc is None:
            return _status_response(404, "NotFound", f'services "{name}" not found')
        sp = self.service_port(svc, port)
        if sp is None:
            return _status_response(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
        selector = (svc.get("spec") or {}).get("selector") or {}
        pods = [
            p
            for p in self.cluster.iter_objects("pods", ns)
            if selector
            and match_label_selector({"matchLabels": selector}, p["metadata"].get("labels"))
            and pod_is_ready(p)
            and (p.get("status") or {}).get("phase") == "Running"
        ]
        if not pods:
            return _status_response(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
        pod = pods[next(self.rr) % len(pods)]
        server = self.sim.inference.get((ns, pod["metadata"]["name"]))
        if server is not None:
            return await server.handle(request, path)
        target = resolve_target_port(sp, pod)
        return web.Response(
            text=f"devcluster: pod {ns}/{pod['metadata']['name']} answered on port {target}\n"
        )


def _status_ip(obj: dict) -> str | None:
    """The load-balancer address an object's status already shows (Service or Ingress), if any."""
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}]
    return ingress[0].get("ip") or None


def resolve_target_port(service_port: dict, pod: dict | None) -> int:
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for c in ((pod or {}).get("spec") or {}).get("containers") or ():
        for p in c.get("ports") or ():
            if p.get("name") == target:
                return int(p["containerPort"])
    return int(service_port.get("port", 0))
