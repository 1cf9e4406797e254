"""HTTPS Kubernetes API emulator hosting many virtual clusters in one aiohttp process: `ApiServer`.

Layout of the URL space (one TLS port):
- `/clusters/<name>/...`  the Kubernetes API of virtual cluster <name> (its kubeconfig's `server:` ends there)
- `/_devcluster/...`      admin API (faults, cluster list), authenticated with the admin token
Routing is done by hand from one catch-all route: aiohttp's router would need a route per resource per
cluster, while a split of the path is cheap and keeps per-cluster overhead at one dict entry.

Request flow: authenticate (bearer token of the cluster, or the admin token) -> cluster faults ->
discovery / OpenAPI / resource handler.  This module only routes; the handlers live by concern:

- devcluster.discovery      `/api`, `/apis`, API resource lists, `/openapi/...`
- devcluster.objects        list, get, create, replace, delete, deletecollection
- devcluster.patch_requests PATCH: patch kinds and server-side apply (algorithms in devcluster.patch)
- devcluster.watch          watch streams
- devcluster.subresources   status, scale, log, binding, eviction, finalize, service proxy
- devcluster.tables         kubectl's Table output
- devcluster.validation     what is refused before anything is stored
- devcluster.faults         the admin API and cluster faults
- devcluster.openshift      the OpenShift look of a cluster
- devcluster.wire           JSON answers, Status bodies, request bodies

Handlers translate HTTP verbs into `VirtualCluster` calls (devcluster.store); `ApiError`s become Kubernetes
`Status` bodies here.  Everything runs on one event loop; the store is only touched from it.

`DevCluster` (devcluster.harness) runs the server on a background thread for
tests and scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from typing import Any

from aiohttp import web

from devcluster import discovery, faults, objects, openapi, resources, tls
from devcluster import kubeconfig as kc
from devcluster.openshift import install_openshift
from devcluster.patch_requests import patch_object
from devcluster.store import ApiError, VirtualCluster
from devcluster.subresources import subresource
from devcluster.watch import watch
from devcluster.wire import json_response, truthy

log = logging.getLogger(__name__)


class ApiServer:
    """The aiohttp application and the virtual clusters it hosts."""

    def __init__(
        self,
        pki: tls.Pki,
        admin_token: str,
        host: str = "127.0.0.1",
        port: int = 6443,
    ) -> None:
        self.pki = pki
        self.admin_token = admin_token
        self.host = host
        self.port = port
        self.clusters: dict[str, VirtualCluster] = {}
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner: web.AppRunner | None = None
        self.sim_module: Any = None

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.host, self.port, ssl_context=self.pki.server_context(), backlog=1024
        )
        await site.start()
        if self.port == 0:
            for addr in self.runner.addresses:
                self.port = addr[1]
                break

    async def stop(self) -> None:
        shutdown = getattr(self.sim_module, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):  # stopping must not fail on a simulation error
                await shutdown()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def cluster_url(self, name: str) -> str:
        return f"{self.url}/clusters/{name}"

    def add_cluster(self, name: str, token: str | None = None, openshift: bool = False) -> VirtualCluster:
        if name in self.clusters:
            raise ValueError(f"cluster {name!r} exists")
        vc = VirtualCluster(
            name, token or secrets.token_urlsafe(32), loop=asyncio.get_running_loop(), openshift=openshift
        )
        if openshift:
            install_openshift(vc)
        self.clusters[name] = vc
        return vc

    def kubeconfig(self, name: str) -> dict:
        vc = self.clusters[name]
        return kc.build(name, self.cluster_url(name), self.pki.ca_pem, vc.token)

    async def set_fault(
        self,
        vc: VirtualCluster,
        kind: str,
        target: str | None = None,
        delay: float | None = None,
        value: Any = None,
    ) -> None:
        """Cluster-level faults are kept on the cluster; node and job faults go to the simulation."""
        await faults.set_fault(self.sim_module, vc, kind, target, delay, value)

    # -------------------------------------------------------------- dispatch
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        try:
            if path.startswith("/clusters/"):
                name, _, rest = path[len("/clusters/") :].partition("/")
                vc = self.clusters.get(name)
                if vc is None:
                    raise ApiError(404, "NotFound", f'cluster "{name}" not found')
                self._authenticate(request, vc)
                if vc.faults:
                    await faults.apply_faults(request, vc)
                return await self._cluster_request(request, vc, "/" + rest)
            if path.startswith("/_devcluster/"):
                self._authenticate(request, None)
                return await faults.admin_request(self, request, path[len("/_devcluster/") :])
            if path in ("/healthz", "/livez", "/readyz"):
                return web.Response(text="ok")
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as exc:
            return json_response(exc.status(), exc.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except web.HTTPException:
            raise
        except Exception:  # the emulator answers 500 like an apiserver bug would, and keeps serving
            log.exception("devcluster: internal error on %s %s", request.method, path)
            return json_response(ApiError(500, "InternalError", "an internal error occurred").status(), 500)

    def _authenticate(self, request: web.Request, vc: VirtualCluster | None) -> None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        ok = bool(token) and (
            hmac.compare_digest(token, self.admin_token)
            or (vc is not None and hmac.compare_digest(token, vc.token))
        )
        if not ok:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    # -------------------------------------------------------------- cluster API
    async def _cluster_request(
        self, request: web.Request, vc: VirtualCluster, rest: str
    ) -> web.StreamResponse:
        if rest == "/version" or rest == "/version/":
            return json_response(openapi.K8S_VERSION)
        if rest in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if rest.startswith("/openapi/"):
            return discovery.openapi_response(request, vc, rest)
        segs = [s for s in rest.split("/") if s]
        if not segs:
            return json_response(discovery.ROOT_PATHS)
        if segs[0] == "api":
            if len(segs) == 1:
                return json_response(discovery.api_versions(f"{self.host}:{self.port}"))
            if segs[1] != "v1":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(segs) == 2:
                return json_response(discovery.api_resource_list("v1", resources.groups()[""]["v1"]))
            return await self._resource_request(request, vc, "", "v1", segs[2:])
        if segs[0] == "apis":
            groups = resources.groups(vc.custom_resources())
            if len(segs) == 1:
                return json_response(discovery.api_group_list(groups))
            group = segs[1]
            if group not in groups or not group:
                # No handler is registered for an unknown group: the real server's mux answers plain text.
                return web.Response(status=404, text="404 page not found\n")
            if len(segs) == 2:
                return json_response(discovery.api_group(group, groups[group]))
            version = segs[2]
            if version not in groups[group]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(segs) == 3:
                return json_response(
                    discovery.api_resource_list(f"{group}/{version}", groups[group][version])
                )
            return await self._resource_request(request, vc, group, version, segs[3:])
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _resource_request(
        self, request: web.Request, vc: VirtualCluster, group: str, version: str, segs: list[str]
    ) -> web.StreamResponse:
        """`[watch/][namespaces/<ns>/]<resource>[/<name>[/<subresource>...]]` to the handler of its verb."""
        watch_path = False
        if segs and segs[0] == "watch":  # deprecated /watch/ paths still used by some clients
            watch_path = True
            segs = segs[1:]
        namespace: str | None = None
        if len(segs) >= 3 and segs[0] == "namespaces" and segs[2] not in ("status", "finalize"):
            namespace = segs[1]
            segs = segs[2:]
        if not segs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        info = vc.resource_by_gvr(group, version, segs[0])
        if info is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not info.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = segs[1] if len(segs) > 1 else None
        sub = segs[2] if len(segs) > 2 else None
        method = request.method
        q = request.query
        if name is None:
            if method == "GET":
                if watch_path or truthy(q.get("watch")):
                    return await watch(request, vc, info, namespace)
                return objects.list_objects(request, vc, info, namespace)
            if method == "POST":
                return await objects.create(request, vc, info, namespace)
            if method == "DELETE":
                return await objects.delete_collection(request, vc, info, namespace)
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource ({method})",
            )
        if info.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None:
            return await subresource(request, vc, info, namespace, name, sub, segs[3:], self.sim_module)
        if method == "GET":
            if watch_path or truthy(q.get("watch")):
                return await watch(request, vc, info, namespace, name)
            return objects.get(request, vc, info, namespace, name)
        if method == "PUT":
            return await objects.replace(request, vc, info, namespace, name)
        if method == "PATCH":
            return await patch_object(request, vc, info, namespace, name)
        if method == "DELETE":
            return await objects.delete(request, vc, info, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")
