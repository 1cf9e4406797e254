"""Subresources: `status`, `scale`, pod `log`, `binding` and `eviction`, namespace `finalize`, service and pod
`proxy`.

Each is reached as `.../<resource>/<name>/<subresource>`.  Pod logs and the service and pod proxies come from the
simulation when it is attached (devcluster.sim); without it logs are one start line and the proxy answers
"no endpoints", as a real cluster without ready pods would.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from devcluster import patch
from devcluster.objects import finish_update
from devcluster.patch_requests import apply_patch
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, VirtualCluster, clone, not_found
from devcluster.validation import check_body
from devcluster.wire import dry_run, json_response, read_body

_CREATED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


async def subresource(
    request: web.Request,
    vc: VirtualCluster,
    info: ResourceInfo,
    namespace: str | None,
    name: str,
    sub: str,
    tail: list[str],
    sim_module: Any,
) -> web.StreamResponse:
    method = request.method
    if sub == "proxy" and info.key == "services":
        return await _service_proxy(request, vc, namespace or "", name, "/".join(tail), sim_module)
    if sub == "proxy" and info.key == "pods":
        return await _pod_proxy(request, vc, namespace or "", name, "/".join(tail), sim_module)
    svc_name = name.split(":", 1)[0]
    obj = vc.peek(info.key, namespace, svc_name if info.key == "services" else name)
    if sub == "finalize" and info.key == "namespaces":
        if obj is None:
            raise not_found(info, name)
        return json_response(obj)
    if sub not in info.subresources and sub not in ("eviction",):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if obj is None:
        raise not_found(info, name)
    if sub == "status":
        if method == "GET":
            return json_response(obj)
        if method == "PUT":
            body = check_body(await read_body(request), info, namespace, name)
            return json_response(vc.update_status(info.key, body, dry_run=dry_run(request)))
        if method == "PATCH":
            ctype = (request.content_type or "").lower()
            body = await read_body(request)
            if "apply-patch" in ctype:
                new = patch.apply_merge(obj, {"status": (body or {}).get("status") or {}})
            else:
                new = apply_patch(ctype, obj, body, info)
            return json_response(vc.update_status(info.key, new, dry_run=dry_run(request)))
    if sub == "scale":
        if method == "GET":
            return json_response(scale_of(obj))
        if method in ("PUT", "PATCH"):
            return json_response(await _scale(request, vc, info, obj))
    if sub == "log" and method == "GET":
        return _pod_log(request, vc, obj)
    if sub == "binding" and method == "POST":
        body = await read_body(request) or {}
        node = ((body.get("target") or {}).get("name")) or ""
        new = clone(obj)
        new.setdefault("spec", {})["nodeName"] = node
        new["metadata"].pop("resourceVersion", None)
        vc.replace(info.key, new)
        return json_response(_CREATED, 201)
    if sub == "eviction" and info.key == "pods" and method == "POST":
        vc.delete("pods", namespace, name)
        return json_response(_CREATED, 201)
    raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")


def scale_of(obj: dict) -> dict:
    """The autoscaling/v1 Scale view of a workload."""
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


async def _scale(request: web.Request, vc: VirtualCluster, info: ResourceInfo, obj: dict) -> dict:
    """PUT or PATCH of a Scale: only its spec.replicas reaches the workload, through the update path."""
    body = await read_body(request)
    scale = scale_of(obj)
    if request.method == "PUT":
        scale = body or {}
    else:
        ctype = (request.content_type or "").lower()
        # A Scale is a built-in type without merge keys: a strategic merge patch of it is a merge patch, also
        # for custom resources (whose own objects refuse strategic merge).
        scale = (
            patch.apply_merge(scale, body)
            if "apply-patch" in ctype
            else apply_patch(ctype.replace("strategic-", ""), scale, body, info)
        )
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(422, "Invalid", "spec.replicas must be a non-negative integer")
    new = clone(obj)
    new.setdefault("spec", {})["replicas"] = replicas
    new["metadata"].pop("resourceVersion", None)
    updated = finish_update(request, vc, info, obj, new)
    return scale_of(updated)


def _pod_log(request: web.Request, vc: VirtualCluster, pod: dict) -> web.Response:
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


async def _pod_proxy(
    request: web.Request, vc: VirtualCluster, namespace: str, name: str, path: str, sim_module: Any
) -> web.StreamResponse:
    """``pods/<name>[:<port>]/proxy/<path>``: the pod's own server answers (e.g. its Prometheus ``/metrics``)."""
    pod, _, port = name.partition(":")
    fn = getattr(sim_module, "proxy_pod", None)
    if fn is None:
        if vc.peek("pods", namespace, pod) is None:
            raise ApiError(404, "NotFound", f'pods "{pod}" not found')
        raise ApiError(503, "ServiceUnavailable", f'pod "{pod}" is not serving')
    return await fn(vc, namespace, pod, port, path, request)


async def _service_proxy(
    request: web.Request, vc: VirtualCluster, namespace: str, name: str, path: str, sim_module: Any
) -> web.StreamResponse:
    service, _, port = name.partition(":")
    fn = getattr(sim_module, "proxy_service", None)
    if fn is None:
        raise ApiError(503, "ServiceUnavailable", f'no endpoints available for service "{service}"')
    return await fn(vc, namespace, service, port, path, request)
