"""HTTPS Kubernetes API emulator hosting many virtual clusters in one aiohttp process.

Layout of the URL space (one TLS port):
- `/clusters/<name>/...`  the Kubernetes API of virtual cluster <name> (its kubeconfig's `server:` ends there)
- `/_devcluster/...`      admin API (faults, cluster list), authenticated with the admin token
Routing is done by hand from one catch-all route: aiohttp's router would need a route per resource per
cluster, while a split of the path is cheap and keeps per-cluster overhead at one dict entry.

Request flow: authenticate (bearer token of the cluster, or the admin token) -> cluster faults ->
discovery / OpenAPI / resource handler.  Resource handlers translate HTTP verbs into `VirtualCluster`
calls (devcluster.store) and patches via devcluster.patch; `ApiError`s become Kubernetes `Status` bodies.
Everything runs on one event loop; the store is only touched from it.

`DevCluster` runs the server on a background thread for tests and scripts (start()/stop(), `.url`,
`.kubeconfig(name)`, `.admin_token`, `.call(fn)` to run code against a store on the loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from devcluster import kubeconfig as kc
from devcluster import openapi, patch, protobuf, resources, tls
from devcluster.resources import ResourceInfo
from devcluster.store import (
    ApiError,
    Selector,
    VirtualCluster,
    Watcher,
    clone,
    decode_continue,
    encode_continue,
    parse_field_selector,
)

log = logging.getLogger(__name__)

JSON = "application/json"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
MAX_WATCH_SECONDS = 1800


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_DUMPS(body).encode(), status=status, content_type=JSON)


def _status_ok(info: ResourceInfo, name: str, uid: str | None = None) -> dict:
    details = {"name": name, "group": info.group, "kind": info.plural}
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes")


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        secs = int(time.time() - datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return "<unknown>"
    secs = max(secs, 0)
    if secs < 120:
        return f"{secs}s"
    if secs < 3 * 3600:
        return f"{secs // 60}m"
    if secs < 48 * 3600:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


# ----------------------------------------------------------------------------------------------- discovery


def _api_resource_list(gv: str, infos: list[ResourceInfo]) -> dict:
    out = []
    for r in infos:
        entry = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        out.append(entry)
        for sub in r.subresources:
            if sub == "scale":
                out.append(
                    {
                        "name": f"{r.plural}/scale",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "group": "autoscaling",
                        "version": "v1",
                        "kind": "Scale",
                        "verbs": ["get", "patch", "update"],
                    }
                )
            elif sub == "status":
                out.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
            elif sub == "log":
                out.append(
                    {
                        "name": f"{r.plural}/log",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Pod",
                        "verbs": ["get"],
                    }
                )
            elif sub == "proxy":
                out.append(
                    {
                        "name": f"{r.plural}/proxy",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "ServiceProxyOptions",
                        "verbs": ["create", "delete", "get", "patch", "update"],
                    }
                )
            elif sub == "binding":
                out.append(
                    {
                        "name": f"{r.plural}/binding",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Binding",
                        "verbs": ["create"],
                    }
                )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def _api_group(group: str, versions: dict[str, list[ResourceInfo]]) -> dict:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}


# ----------------------------------------------------------------------------------------------- tables

_COLUMNS: dict[str, list[tuple[str, str, Callable[[dict], Any]]]] = {
    "nodes": [
        ("Status", "string", lambda o: _node_status(o)),
        (
            "Roles",
            "string",
            lambda o: ",".join(
                sorted(
                    k.split("/", 1)[1]
                    for k in (o["metadata"].get("labels") or {})
                    if k.startswith("node-role.kubernetes.io/")
                )
            )
            or "<none>",
        ),
        ("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))),
        (
            "Version",
            "string",
            lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""),
        ),
    ],
    "pods": [
        ("Ready", "string", lambda o: _pod_ready(o)),
        ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "Pending")),
        (
            "Restarts",
            "integer",
            lambda o: sum(
                int(c.get("restartCount") or 0)
                for c in (o.get("status") or {}).get("containerStatuses") or []
            ),
        ),
        ("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))),
    ],
    "deployments.apps": [
        (
            "Ready",
            "string",
            lambda o: f"{(o.get('status') or {}).get('readyReplicas', 0)}/"
            f"{(o.get('spec') or {}).get('replicas', 1)}",
        ),
        ("Up-to-date", "integer", lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
        ("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))),
    ],
    "namespaces": [
        ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "Active")),
        ("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))),
    ],
}


def _node_status(o: dict) -> str:
    conds = {c.get("type"): c.get("status") for c in (o.get("status") or {}).get("conditions") or []}
    s = "Ready" if conds.get("Ready") == "True" else "NotReady" if conds else "Unknown"
    if (o.get("spec") or {}).get("unschedulable"):
        s += ",SchedulingDisabled"
    return s


def _pod_ready(o: dict) -> str:
    cs = (o.get("status") or {}).get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or []) or len(cs)
    return f"{sum(1 for c in cs if c.get('ready'))}/{total}"


def _table(key: str, objs: list[dict], rv: str, cont: str | None = None) -> dict:
    cols = _COLUMNS.get(key, [("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp")))])
    meta: dict = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0},
            *({"name": n, "type": t, "format": "", "description": n, "priority": 0} for n, t, _ in cols),
        ],
        "rows": [{"cells": [o["metadata"]["name"], *(f(o) for _, _, f in cols)], "object": o} for o in objs],
    }


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


# ----------------------------------------------------------------------------------------------- the server


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
            _install_openshift(vc)
        self.clusters[name] = vc
        return vc

    def kubeconfig(self, name: str) -> dict:
        vc = self.clusters[name]
        return kc.build(name, self.cluster_url(name), self.pki.ca_pem, vc.token)

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
                    await self._apply_faults(request, vc)
                return await self._cluster_request(request, vc, "/" + rest)
            if path.startswith("/_devcluster/"):
                self._authenticate(request, None)
                return await self._admin(request, path[len("/_devcluster/") :])
            if path in ("/healthz", "/livez", "/readyz"):
                return web.Response(text="ok")
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except web.HTTPException:
            raise
        except Exception:  # the emulator answers 500 like an apiserver bug would, and keeps serving
            log.exception("devcluster: internal error on %s %s", request.method, path)
            return _json(ApiError(500, "InternalError", "an internal error occurred").status(), 500)

    def _authenticate(self, request: web.Request, vc: VirtualCluster | None) -> None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        ok = bool(token) and (
            hmac.compare_digest(token, self.admin_token)
            or (vc is not None and hmac.compare_digest(token, vc.token))
        )
        if not ok:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    async def _apply_faults(self, request: web.Request, vc: VirtualCluster) -> None:
        faults = vc.faults or {}
        if "unreachable" in faults:
            # Never answer while the fault lasts (bounded), then drop the connection: clients see a timeout.
            deadline = time.monotonic() + float(faults["unreachable"] or 300)
            while vc.faults and "unreachable" in vc.faults and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if vc.faults and "unreachable" in vc.faults:
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError("cluster unreachable")
        if "slow" in faults:
            await asyncio.sleep(float(faults["slow"] or 2.0))
        if "error" in faults:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")

    # -------------------------------------------------------------- admin API
    async def _admin(self, request: web.Request, rest: str) -> web.StreamResponse:
        parts = [p for p in rest.split("/") if p]
        if parts == ["clusters"] and request.method == "GET":
            return _json(
                {
                    "items": [
                        {
                            "name": n,
                            "server": self.cluster_url(n),
                            "faults": sorted((vc.faults or {}).keys()),
                            "nodes": len(vc.iter_objects("nodes")),
                        }
                        for n, vc in self.clusters.items()
                    ]
                }
            )
        if (
            len(parts) == 3
            and parts[0] == "clusters"
            and parts[2] == "faults"
            and request.method in ("POST", "PUT")
        ):
            vc = self.clusters.get(parts[1])
            if vc is None:
                raise ApiError(404, "NotFound", f'cluster "{parts[1]}" not found')
            try:
                body = await request.json()
            except ValueError as exc:
                raise ApiError(400, "BadRequest", "body must be JSON") from exc
            await self.set_fault(
                vc, str(body.get("kind") or ""), body.get("target"), body.get("delay"), body.get("value")
            )
            return _json({"name": vc.name, "faults": sorted((vc.faults or {}).keys())})
        raise ApiError(404, "NotFound", "unknown admin endpoint")

    async def set_fault(
        self,
        vc: VirtualCluster,
        kind: str,
        target: str | None = None,
        delay: float | None = None,
        value: Any = None,
    ) -> None:
        """Cluster-level faults are kept here; node and job faults go to the simulation."""
        if kind in ("unreachable", "slow", "error"):
            vc.faults = dict(vc.faults or {})
            vc.faults[kind] = delay
        elif kind == "clear":
            if target:
                if vc.faults:
                    vc.faults.pop(target, None)
            else:
                vc.faults = None
            fn = getattr(self.sim_module, "set_fault", None)
            if fn is not None:
                await fn(vc, kind, target, value)
        elif kind in ("node-not-ready", "job-fail") or kind:
            fn = getattr(self.sim_module, "set_fault", None)
            if fn is None:
                raise ApiError(501, "NotImplemented", f"fault {kind!r} needs the simulation")
            await fn(vc, kind, target, value if value is not None else True)
        else:
            raise ApiError(400, "BadRequest", "fault kind is required")

    # -------------------------------------------------------------- cluster API
    async def _cluster_request(
        self, request: web.Request, vc: VirtualCluster, rest: str
    ) -> web.StreamResponse:
        if rest == "/version" or rest == "/version/":
            return _json(openapi.K8S_VERSION)
        if rest in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if rest.startswith("/openapi/"):
            return self._openapi(request, vc, rest)
        segs = [s for s in rest.split("/") if s]
        if not segs:
            return _json(
                {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/openapi/v2", "/openapi/v3", "/version"]}
            )
        if segs[0] == "api":
            if len(segs) == 1:
                return _json(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                        ],
                    }
                )
            if segs[1] != "v1":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(segs) == 2:
                return _json(_api_resource_list("v1", resources.groups()[""]["v1"]))
            return await self._resource_request(request, vc, "", "v1", segs[2:])
        if segs[0] == "apis":
            groups = resources.groups(vc.custom_resources())
            if len(segs) == 1:
                return _json(
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [_api_group(g, vs) for g, vs in groups.items() if g],
                    }
                )
            group = segs[1]
            if group not in groups or not group:
                # No handler is registered for an unknown group: the real server's mux answers plain text.
                return web.Response(status=404, text="404 page not found\n")
            if len(segs) == 2:
                return _json(_api_group(group, groups[group]))
            version = segs[2]
            if version not in groups[group]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(segs) == 3:
                return _json(_api_resource_list(f"{group}/{version}", groups[group][version]))
            return await self._resource_request(request, vc, group, version, segs[3:])
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _openapi(self, request: web.Request, vc: VirtualCluster, rest: str) -> web.Response:
        extra = tuple(vc.custom_resources())
        if rest.rstrip("/") == "/openapi/v2":
            if "json" not in request.headers.get("Accept", "json") and "*/*" not in request.headers.get(
                "Accept", ""
            ):
                # Only the JSON form is served; protobuf-only readers fall back to built-in type data.
                raise ApiError(406, "NotAcceptable", "only application/json is available for /openapi/v2")
            return _json(openapi.v2_document(extra))
        if rest.rstrip("/") == "/openapi/v3":
            return _json(openapi.v3_index(f"/clusters/{vc.name}", extra))
        tail = rest[len("/openapi/v3/") :].strip("/").split("/")
        if tail[:2] == ["api", "v1"] and len(tail) == 2:
            return _json(openapi.v3_document("", "v1", extra))
        if tail[0] == "apis" and len(tail) == 3:
            doc = openapi.v3_document(tail[1], tail[2], extra)
            if doc["paths"]:
                return _json(doc)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # -------------------------------------------------------------- resources
    async def _resource_request(
        self, request: web.Request, vc: VirtualCluster, group: str, version: str, segs: list[str]
    ) -> web.StreamResponse:
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
                if watch_path or _truthy(q.get("watch")):
                    return await self._watch(request, vc, info, namespace)
                return self._list(request, vc, info, namespace)
            if method == "POST":
                return await self._create(request, vc, info, namespace)
            if method == "DELETE":
                return await self._delete_collection(request, vc, info, namespace)
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource ({method})",
            )
        if info.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None:
            return await self._subresource(request, vc, info, namespace, name, sub, segs[3:])
        if method == "GET":
            if watch_path or _truthy(q.get("watch")):
                return await self._watch(request, vc, info, namespace, name)
            obj = vc.peek(info.key, namespace, name)
            if obj is None:
                raise _not_found(info, name)
            return _json(_table(info.key, [obj], vc.resource_version) if _wants_table(request) else obj)
        if method == "PUT":
            return await self._replace(request, vc, info, namespace, name)
        if method == "PATCH":
            return await self._patch(request, vc, info, namespace, name)
        if method == "DELETE":
            return await self._delete(request, vc, info, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")

    def _list(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
    ) -> web.Response:
        q = request.query
        if info.key in resources.VIRTUAL_KEYS:
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        _check_field_selector(info, q.get("fieldSelector"))
        items = vc.iter_objects(
            info.key, namespace, q.get("labelSelector") or None, q.get("fieldSelector") or None
        )
        cont_token = None
        limit = int(q.get("limit") or 0)
        if q.get("continue"):
            after = decode_continue(q["continue"])
            items = [
                o for o in items if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > after
            ]
        remaining = 0
        if limit and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            cont_token = encode_continue(last.get("namespace") or "", last["name"])
        rv = vc.resource_version
        if _wants_table(request):
            return _json(_table(info.key, items, rv, cont_token))
        meta: dict = {"resourceVersion": rv}
        if cont_token:
            meta["continue"] = cont_token
            if not (q.get("labelSelector") or q.get("fieldSelector")):
                # The real server can only count what is left when nothing filters the list.
                meta["remainingItemCount"] = remaining
        return _json(
            {"kind": info.list_kind_name, "apiVersion": info.api_version, "metadata": meta, "items": items}
        )

    async def _watch(
        self,
        request: web.Request,
        vc: VirtualCluster,
        info: ResourceInfo,
        namespace: str | None,
        name: str | None = None,
    ) -> web.StreamResponse:
        q = request.query
        fs = q.get("fieldSelector") or None
        _check_field_selector(info, fs)
        if name:
            fs = f"metadata.name={name}" + (f",{fs}" if fs else "")
        watcher = Watcher(info.key, namespace, Selector(q.get("labelSelector") or None, fs))
        rv_param = q.get("resourceVersion") or ""
        initial: list[tuple[str, dict]] = []
        if _truthy(q.get("sendInitialEvents")):
            # WatchList (client-go reflectors, kubectl wait): current state, then a bookmark marking its end.
            initial = [
                ("ADDED", o) for o in vc.iter_objects(info.key, namespace, q.get("labelSelector") or None, fs)
            ]
            initial.append(
                (
                    "BOOKMARK",
                    {
                        "kind": info.kind,
                        "apiVersion": info.api_version,
                        "metadata": {
                            "resourceVersion": vc.resource_version,
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                )
            )
        elif rv_param in ("", "0"):
            initial = [
                ("ADDED", o) for o in vc.iter_objects(info.key, namespace, q.get("labelSelector") or None, fs)
            ]
        else:
            try:
                rv = int(rv_param)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}") from exc
            hist = vc.history_since(info.key, rv)
            if hist is None:
                initial = [
                    (
                        "ERROR",
                        ApiError(
                            410, "Expired", f"too old resource version: {rv} ({vc.resource_version})"
                        ).status(),
                    )
                ]
            else:
                probe = Watcher(info.key, namespace, watcher.selector)
                for t, o, old in hist:
                    probe.offer(t, o, old)
                while not probe.queue.empty():
                    initial.append(probe.queue.get_nowait())
        try:
            timeout = float(q.get("timeoutSeconds") or MAX_WATCH_SECONDS)
        except ValueError:
            timeout = MAX_WATCH_SECONDS
        timeout = max(0.0, min(timeout, MAX_WATCH_SECONDS))
        as_table = _wants_table(request)

        def encode(t: str, o: dict) -> bytes:
            if as_table and t in ("ADDED", "MODIFIED", "DELETED"):
                o = _table(info.key, [o], o["metadata"].get("resourceVersion", ""))  # kubectl get -w
            return _DUMPS({"type": t, "object": o}).encode() + b"\n"

        vc.add_watcher(watcher)
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            deadline = time.monotonic() + timeout
            for t, o in initial:
                await resp.write(encode(t, o))
                if t == "ERROR":
                    return resp
            while not watcher.overflowed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    t, o = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                await resp.write(encode(t, o))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            vc.remove_watcher(watcher)
        return resp

    async def _body(self, request: web.Request) -> Any:
        ctype = (request.content_type or "").lower()
        if "protobuf" in ctype:
            try:
                return protobuf.decode(await request.read())
            except protobuf.ProtobufError as exc:
                raise ApiError(415, "UnsupportedMediaType", str(exc)) from exc
        if "cbor" in ctype:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f"accepted media types include: application/json, application/yaml ({ctype})",
            )
        raw = await request.read()
        if not raw:
            return None
        try:
            if "yaml" in ctype:
                return yaml.load(raw, Loader=_YAML_LOADER)  # noqa: S506 - safe loader (C or pure Python)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(
                400, "BadRequest", f"the request body could not be decoded: {exc.__class__.__name__}"
            ) from exc

    def _manager(self, request: web.Request) -> str:
        m = request.query.get("fieldManager")
        if m:
            return m
        ua = request.headers.get("User-Agent", "unknown")
        return ua.split("/", 1)[0] or "unknown"

    def _check_body(self, body: Any, info: ResourceInfo, namespace: str | None, name: str | None) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        kind = body.get("kind")
        if kind and kind != info.kind:
            raise ApiError(
                400,
                "BadRequest",
                f"the kind of the object ({kind}) does not match the resource ({info.kind})",
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if info.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            if namespace:
                meta["namespace"] = namespace
        if name is not None:
            if meta.get("name") and meta["name"] != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            meta["name"] = name
        return body

    def _prepare_create(self, info: ResourceInfo, obj: dict) -> None:
        if info.has_status and info.key not in ("nodes", "customresourcedefinitions.apiextensions.k8s.io"):
            obj.pop("status", None)
            if info.key == "pods":
                obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj)}

    async def _create(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
    ) -> web.Response:
        body = await self._body(request)
        if info.key in resources.VIRTUAL_KEYS:
            return _json(_review(info, body), 201)
        if info.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        obj = self._check_body(body, info, namespace, None)
        self._prepare_create(info, obj)
        _validate(info, obj)
        obj["apiVersion"] = info.api_version
        obj["kind"] = info.kind
        obj["metadata"].pop("managedFields", None)
        patch.track_update(None, obj, self._manager(request), info.api_version)
        created = vc.create(info.key, obj, dry_run=self._dry_run(request))
        return _json(created, 201)

    @staticmethod
    def _dry_run(request: web.Request) -> bool:
        return request.query.get("dryRun") == "All"

    def _finish_update(
        self,
        request: web.Request,
        vc: VirtualCluster,
        info: ResourceInfo,
        old: dict,
        new: dict,
        manager_tracking: bool = True,
    ) -> dict:
        if info.has_status:
            # The main resource ignores status; the status subresource is the way to change it.
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        _validate(info, new)
        if manager_tracking:
            patch.track_update(old, new, self._manager(request), info.api_version)
        return vc.replace(info.key, new, dry_run=self._dry_run(request))

    async def _replace(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
    ) -> web.Response:
        body = self._check_body(await self._body(request), info, namespace, name)
        old = vc.peek(info.key, namespace, name)
        if old is None:
            raise _not_found(info, name)
        return _json(self._finish_update(request, vc, info, old, body))

    def _apply_patch(self, ctype: str, current: dict, body: Any, info: ResourceInfo) -> dict:
        if "json-patch" in ctype:
            return patch.json_patch(current, body)
        if "merge-patch" in ctype and "strategic" not in ctype:
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "merge patch must be an object")
            return patch.merge_patch(current, body)
        if "strategic-merge-patch" in ctype:
            if info.extra.get("crd"):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources; use a merge patch or apply",
                )
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "strategic merge patch must be an object")
            return patch.strategic_merge(current, body)
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted "
            "media types include: application/json-patch+json, application/merge-patch+json, "
            f"application/apply-patch+yaml ({ctype})",
        )

    async def _patch(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
    ) -> web.Response:
        ctype = (request.content_type or "").lower()
        body = await self._body(request)
        old = vc.peek(info.key, namespace, name)
        if "apply-patch" in ctype:
            return await self._server_side_apply(request, vc, info, namespace, name, body, old)
        if old is None:
            raise _not_found(info, name)
        new = self._apply_patch(ctype, old, body, info)
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patch produced a non-object")
        self._check_immutable(info, old, new)
        return _json(self._finish_update(request, vc, info, old, new))

    @staticmethod
    def _check_immutable(info: ResourceInfo, old: dict, new: dict) -> None:
        meta = new.setdefault("metadata", {})
        if meta.get("name") != old["metadata"]["name"] or (
            info.namespaced and meta.get("namespace") != old["metadata"].get("namespace")
        ):
            raise ApiError(
                400, "BadRequest", "metadata.name and metadata.namespace cannot be changed by a patch"
            )

    async def _server_side_apply(
        self,
        request: web.Request,
        vc: VirtualCluster,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        body: Any,
        old: dict | None,
    ) -> web.Response:
        q = request.query
        manager = q.get("fieldManager")
        if not manager:
            raise ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                {
                    "group": "meta.k8s.io",
                    "kind": "PatchOptions",
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: is required for apply patch",
                            "field": "fieldManager",
                        }
                    ],
                },
            )
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise ApiError(400, "BadRequest", "apply patches must set apiVersion and kind")
        if body.get("kind") != info.kind or body.get("apiVersion") != info.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the apply patch's {body.get('apiVersion')}/{body.get('kind')} "
                f"does not match the resource {info.api_version}/{info.kind}",
            )
        body = self._check_body(body, info, namespace, name)
        body["metadata"].pop("managedFields", None)
        if info.has_status:
            body.pop("status", None)
        force = _truthy(q.get("force"))
        new = patch.server_side_apply(clone(old) if old else None, body, manager, force, info.api_version)
        if old is None:
            self._prepare_create(info, new)
            _validate(info, new)
            return _json(vc.create(info.key, new, dry_run=self._dry_run(request)), 201)
        self._check_immutable(info, old, new)
        return _json(self._finish_update(request, vc, info, old, new, manager_tracking=False))

    async def _delete_options(self, request: web.Request) -> dict:
        opts: dict = {}
        if request.can_read_body:
            with contextlib.suppress(ApiError):
                b = await self._body(request)
                if isinstance(b, dict):
                    opts = b
        q = request.query
        if q.get("propagationPolicy"):
            opts["propagationPolicy"] = q["propagationPolicy"]
        if q.get("dryRun"):
            opts["dryRun"] = [q["dryRun"]]
        return opts

    async def _delete(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
    ) -> web.Response:
        opts = await self._delete_options(request)
        policy = opts.get("propagationPolicy")
        if not policy and opts.get("orphanDependents") is True:
            policy = "Orphan"
        dry = "All" in (opts.get("dryRun") or [])
        obj = vc.delete(
            info.key,
            namespace,
            name,
            propagation_policy=policy,
            preconditions=opts.get("preconditions"),
            dry_run=dry,
        )
        if obj is None:
            raise _not_found(info, name)
        if info.key == "namespaces" or (
            obj["metadata"].get("deletionTimestamp") and vc.peek(info.key, namespace, name) is not None
        ):
            return _json(obj, 202 if info.key != "namespaces" else 200)
        if info.key == "pods":
            return _json(obj)
        return _json(_status_ok(info, name, obj["metadata"].get("uid")))

    async def _delete_collection(
        self, request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
    ) -> web.Response:
        if "deletecollection" not in info.verbs:
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        opts = await self._delete_options(request)
        q = request.query
        _check_field_selector(info, q.get("fieldSelector"))
        deleted = []
        for o in vc.iter_objects(
            info.key, namespace, q.get("labelSelector") or None, q.get("fieldSelector") or None
        ):
            meta = o["metadata"]
            d = vc.delete(
                info.key,
                meta.get("namespace"),
                meta["name"],
                propagation_policy=opts.get("propagationPolicy"),
            )
            if d is not None:
                deleted.append(d)
        return _json(
            {
                "kind": info.list_kind_name,
                "apiVersion": info.api_version,
                "metadata": {"resourceVersion": vc.resource_version},
                "items": deleted,
            }
        )

    # -------------------------------------------------------------- subresources
    async def _subresource(
        self,
        request: web.Request,
        vc: VirtualCluster,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        sub: str,
        tail: list[str],
    ) -> web.StreamResponse:
        method = request.method
        if sub == "proxy" and info.key == "services":
            return await self._service_proxy(request, vc, namespace or "", name, "/".join(tail))
        svc_name = name.split(":", 1)[0]
        obj = vc.peek(info.key, namespace, svc_name if info.key == "services" else name)
        if sub == "finalize" and info.key == "namespaces":
            if obj is None:
                raise _not_found(info, name)
            return _json(obj)
        if sub not in info.subresources and sub not in ("eviction",):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if obj is None:
            raise _not_found(info, name)
        if sub == "status":
            if method == "GET":
                return _json(obj)
            if method == "PUT":
                body = self._check_body(await self._body(request), info, namespace, name)
                return _json(vc.update_status(info.key, body, dry_run=self._dry_run(request)))
            if method == "PATCH":
                ctype = (request.content_type or "").lower()
                body = await self._body(request)
                if "apply-patch" in ctype:
                    new = patch.apply_merge(obj, {"status": (body or {}).get("status") or {}})
                else:
                    new = self._apply_patch(ctype, obj, body, info)
                return _json(vc.update_status(info.key, new, dry_run=self._dry_run(request)))
        if sub == "scale":
            if method == "GET":
                return _json(_scale_of(info, obj))
            if method in ("PUT", "PATCH"):
                body = await self._body(request)
                scale = _scale_of(info, obj)
                if method == "PUT":
                    scale = body or {}
                else:
                    ctype = (request.content_type or "").lower()
                    scale = (
                        patch.apply_merge(scale, body)
                        if "apply-patch" in ctype
                        else self._apply_patch(ctype.replace("strategic-", ""), scale, body, info)
                    )
                replicas = (scale.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise ApiError(422, "Invalid", "spec.replicas must be a non-negative integer")
                new = clone(obj)
                new.setdefault("spec", {})["replicas"] = replicas
                new["metadata"].pop("resourceVersion", None)
                updated = self._finish_update(request, vc, info, obj, new)
                return _json(_scale_of(info, updated))
        if sub == "log" and method == "GET":
            return self._pod_log(request, vc, obj)
        if sub == "binding" and method == "POST":
            body = await self._body(request) or {}
            node = ((body.get("target") or {}).get("name")) or ""
            new = clone(obj)
            new.setdefault("spec", {})["nodeName"] = node
            new["metadata"].pop("resourceVersion", None)
            vc.replace(info.key, new)
            return _json(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
            )
        if sub == "eviction" and info.key == "pods" and method == "POST":
            vc.delete("pods", namespace, name)
            return _json(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
            )
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")

    def _pod_log(self, request: web.Request, vc: VirtualCluster, pod: dict) -> web.Response:
        q = request.query
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = q.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None and len(containers) > 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod "
                f"{pod['metadata']['name']}, choose one of: {containers}",
            )
        if container is not None and containers and container not in containers:
            raise ApiError(
                400, "BadRequest", f"container {container} is not valid for pod {pod['metadata']['name']}"
            )
        meta = pod["metadata"]
        text = None
        fn = getattr(vc.sim, "pod_log", None)
        if fn is not None:
            text = fn(meta.get("namespace"), meta["name"], container)
        if text is None:
            image = next(
                (
                    c.get("image")
                    for c in (pod.get("spec") or {}).get("containers") or []
                    if c.get("name") == container
                ),
                "",
            )
            text = (
                f"devcluster: container {container} (image {image}) of pod {meta.get('namespace')}/"
                f"{meta['name']} started\n"
            )
        if q.get("tailLines"):
            with contextlib.suppress(ValueError):
                n = int(q["tailLines"])
                text = "".join(text.splitlines(keepends=True)[-n:]) if n > 0 else ""
        return web.Response(text=text, content_type="text/plain")

    async def _service_proxy(
        self, request: web.Request, vc: VirtualCluster, namespace: str, name: str, path: str
    ) -> web.StreamResponse:
        service, _, port = name.partition(":")
        fn = getattr(self.sim_module, "proxy_service", None)
        if fn is None:
            raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{service}"')
        return await fn(vc, namespace, service, port, path, request)


_WORKLOADS = frozenset(
    {"deployments.apps", "replicasets.apps", "statefulsets.apps", "daemonsets.apps", "replicationcontrollers"}
)


def _selector_matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _validate(info: ResourceInfo, obj: dict) -> None:
    """422 Invalid for the workload mistakes the real validation catches first: a negative replica count, a
    missing or non-matching selector, a pod template without containers or a container without an image.
    (Only these: the emulator does not re-implement every type's validation.)"""
    if info.key not in _WORKLOADS:
        return
    spec = obj.get("spec") or {}
    causes: list[tuple[str, str, str]] = []  # (field, reason, message)
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(
            (
                "spec.replicas",
                "FieldValueInvalid",
                f"Invalid value: {replicas}: must be greater than or equal to 0",
            )
        )
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = spec.get("selector")
    if info.key == "replicationcontrollers":
        selector = {"matchLabels": selector or labels}
    if not selector:
        causes.append(("spec.selector", "FieldValueRequired", "Required value"))
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(("spec.selector", "FieldValueInvalid", "Invalid value: {}: empty selector is invalid"))
    if not selector or not _selector_matches(selector, labels):
        causes.append(
            (
                "spec.template.metadata.labels",
                "FieldValueInvalid",
                f"Invalid value: {_DUMPS(labels)}: `selector` does not match template `labels`",
            )
        )
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    for i, c in enumerate(containers):
        if not (c or {}).get("image"):
            causes.append(
                (f"spec.template.spec.containers[{i}].image", "FieldValueRequired", "Required value")
            )
    if not causes:
        return
    listed = [f"{f}: {m}" for f, _, m in causes]
    name = obj["metadata"].get("name", "")
    raise ApiError(
        422,
        "Invalid",
        f'{info.kind}{"." + info.group if info.group else ""} "{name}" is invalid: '
        + (listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"),
        {
            "name": name,
            **({"group": info.group} if info.group else {}),
            "kind": info.kind,
            "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
        },
    )


def _check_field_selector(info: ResourceInfo, selector: str | None) -> None:
    """400 for a field the resource cannot be selected on, with the real server's message."""
    allowed = resources.field_selectors(info)
    if not selector or allowed is None:
        return
    for path, _, _ in parse_field_selector(selector):
        field = ".".join(path)
        if field not in allowed:
            only = ", ".join(f'"{f}"' for f in allowed)
            raise ApiError(400, "BadRequest", f'"{field}" is not a known field selector: only {only}')


def _not_found(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{info.plural}{"." + info.group if info.group else ""} "{name}" not found',
        {"name": name, "group": info.group, "kind": info.plural},
    )


def _qos_class(pod: dict) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    reqs = [(c.get("resources") or {}) for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in reqs):
        return "BestEffort"
    if all(
        r.get("limits")
        and (not r.get("requests") or r.get("requests") == r.get("limits"))
        and {"cpu", "memory"} <= set(r["limits"])
        for r in reqs
    ):
        return "Guaranteed"
    return "Burstable"


def _scale_of(info: ResourceInfo, obj: dict) -> dict:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: obj["metadata"].get(k)
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if obj["metadata"].get(k)
        },
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sel.items()),
        },
    }


def _review(info: ResourceInfo, body: Any) -> dict:
    """Access reviews: the emulator has one all-powerful user, so everything is allowed."""
    out = clone(body) if isinstance(body, dict) else {}
    out["apiVersion"] = info.api_version
    out["kind"] = info.kind
    out.setdefault("metadata", {})["creationTimestamp"] = None
    if info.plural == "selfsubjectaccessreviews":
        out["status"] = {"allowed": True, "reason": "devcluster grants every request to its admin user"}
    elif info.plural == "selfsubjectrulesreviews":
        out["status"] = {
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": False,
        }
    else:
        out["status"] = {
            "userInfo": {"username": "devcluster-admin", "groups": ["system:masters", "system:authenticated"]}
        }
    return out


def _install_openshift(vc: VirtualCluster) -> None:
    """Make a virtual cluster look like OpenShift: its config/route API groups and a ClusterVersion."""

    def crd(group: str, plural: str, kind: str, scope: str) -> dict:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": scope,
                "names": {
                    "plural": plural,
                    "singular": kind.lower(),
                    "kind": kind,
                    "listKind": f"{kind}List",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }

    vc.create(
        "customresourcedefinitions.apiextensions.k8s.io",
        crd("config.openshift.io", "clusterversions", "ClusterVersion", "Cluster"),
    )
    vc.create(
        "customresourcedefinitions.apiextensions.k8s.io",
        crd("config.openshift.io", "infrastructures", "Infrastructure", "Cluster"),
    )
    vc.create(
        "customresourcedefinitions.apiextensions.k8s.io",
        crd("route.openshift.io", "routes", "Route", "Namespaced"),
    )
    vc.create(
        "customresourcedefinitions.apiextensions.k8s.io",
        crd("project.openshift.io", "projects", "Project", "Cluster"),
    )
    vc.create(
        "clusterversions.config.openshift.io",
        {
            "metadata": {"name": "version"},
            "spec": {"channel": "stable-4.16", "clusterID": vc.uid},
            "status": {
                "desired": {"version": "4.16.0"},
                "history": [{"state": "Completed", "version": "4.16.0"}],
            },
        },
    )


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
    >>> dc.stop()
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
    ) -> None:
        self.nodes_spec = nodes
        self.names = names or cluster_names(clusters)
        self.openshift = openshift
        self.sim_config = sim_config
        self.use_sim = use_sim
        self.admin_token = secrets.token_urlsafe(32)
        self.pki = tls.generate([host])
        self.server = ApiServer(self.pki, self.admin_token, host=host, port=port)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -------------------------------------------------------------- setup shared with the CLI
    async def setup(self) -> None:
        """Start serving and create the clusters (on the running loop)."""
        await self.server.start()
        sim = _load_sim() if self.use_sim else None
        self.server.sim_module = sim
        nodes = self._resolve_nodes(sim)
        config = self.sim_config
        if sim is not None and config is None and hasattr(sim, "SimConfig"):
            config = sim.SimConfig()
        for i, name in enumerate(self.names):
            vc = self.server.add_cluster(name, openshift=self.openshift)
            if sim is not None:
                sim.attach(vc, config, nodes)
            else:
                _fallback_attach(vc, nodes)
            if i % 50 == 49:
                await asyncio.sleep(0)  # let already-started requests through while thousands are created

    def _resolve_nodes(self, sim: Any) -> list[dict]:
        spec = self.nodes_spec
        if isinstance(spec, list):
            return spec
        if sim is not None and hasattr(sim, "load_nodes"):
            return sim.load_nodes(spec or "cpu-small")
        return fallback_nodes(spec)

    # -------------------------------------------------------------- thread mode
    def start(self, timeout: float = 120.0) -> DevCluster:
        self._thread = threading.Thread(target=self._run, name="devcluster", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("devcluster did not start in time")
        if self._error is not None:
            raise RuntimeError("devcluster failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.setup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
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
            loop.close()

    def stop(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None

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
