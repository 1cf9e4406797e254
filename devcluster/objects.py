"""The verbs on whole objects: list, get, create, replace, delete and deletecollection.

Also the update path that replace, patch, apply and the scale subresource share (`finish_update`: status is
kept, workloads validated, managedFields tracked), what creation resets (`prepare_create`), and the answers
to access reviews, which are created but never stored.  Each handler turns one HTTP request into
`VirtualCluster` calls (devcluster.store).
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from devcluster import patch, resources, tables
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, VirtualCluster, clone, decode_continue, encode_continue, not_found
from devcluster.validation import check_body, check_field_selector, validate
from devcluster.wire import dry_run, field_manager, json_response, read_body, status_ok


def list_objects(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
) -> web.Response:
    q = request.query
    if info.key in resources.VIRTUAL_KEYS:
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )
    check_field_selector(info, q.get("fieldSelector"))
    items = vc.iter_objects(
        info.key, namespace, q.get("labelSelector") or None, q.get("fieldSelector") or None
    )
    cont_token = None
    limit = int(q.get("limit") or 0)
    if q.get("continue"):
        after = decode_continue(q["continue"])
        items = [o for o in items if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > after]
    remaining = 0
    if limit and len(items) > limit:
        remaining = len(items) - limit
        items = items[:limit]
        last = items[-1]["metadata"]
        cont_token = encode_continue(last.get("namespace") or "", last["name"])
    rv = vc.resource_version
    if tables.wants_table(request):
        return json_response(tables.table(info.key, items, rv, cont_token))
    meta: dict = {"resourceVersion": rv}
    if cont_token:
        meta["continue"] = cont_token
        if not (q.get("labelSelector") or q.get("fieldSelector")):
            # The real server can only count what is left when nothing filters the list.
            meta["remainingItemCount"] = remaining
    return json_response(
        {"kind": info.list_kind_name, "apiVersion": info.api_version, "metadata": meta, "items": items}
    )


def get(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
) -> web.Response:
    obj = vc.peek(info.key, namespace, name)
    if obj is None:
        raise not_found(info, name)
    return json_response(
        tables.table(info.key, [obj], vc.resource_version) if tables.wants_table(request) else obj
    )


def qos_class(pod: dict) -> str:
    """The pod's QoS class from its containers' requests and limits, as the real server sets it on create."""
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


def prepare_create(info: ResourceInfo, obj: dict) -> None:
    """A new object's status is the server's, not the client's (nodes and CRDs excepted, as upstream)."""
    if info.has_status and info.key not in ("nodes", "customresourcedefinitions.apiextensions.k8s.io"):
        obj.pop("status", None)
        if info.key == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj)}


def review(info: ResourceInfo, body: Any) -> dict:
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


async def create(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
) -> web.Response:
    body = await read_body(request)
    if info.key in resources.VIRTUAL_KEYS:
        return json_response(review(info, body), 201)
    if info.namespaced and namespace is None:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    obj = check_body(body, info, namespace, None)
    prepare_create(info, obj)
    validate(info, obj)
    obj["apiVersion"] = info.api_version
    obj["kind"] = info.kind
    obj["metadata"].pop("managedFields", None)
    patch.track_update(None, obj, field_manager(request), info.api_version)
    created = vc.create(info.key, obj, dry_run=dry_run(request))
    return json_response(created, 201)


def finish_update(
    request: web.Request,
    vc: VirtualCluster,
    info: ResourceInfo,
    old: dict,
    new: dict,
    manager_tracking: bool = True,
) -> dict:
    """Store `new` in place of `old`: the last step of replace, patch, apply and scale."""
    if info.has_status:
        # The main resource ignores status; the status subresource is the way to change it.
        if "status" in old:
            new["status"] = clone(old["status"])
        else:
            new.pop("status", None)
    validate(info, new)
    if manager_tracking:
        patch.track_update(old, new, field_manager(request), info.api_version)
    return vc.replace(info.key, new, dry_run=dry_run(request))


async def replace(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
) -> web.Response:
    body = check_body(await read_body(request), info, namespace, name)
    old = vc.peek(info.key, namespace, name)
    if old is None:
        raise not_found(info, name)
    return json_response(finish_update(request, vc, info, old, body))


async def _delete_options(request: web.Request) -> dict:
    """DeleteOptions from the body (when it decodes to an object) overridden by the query parameters."""
    opts: dict = {}
    if request.can_read_body:
        with contextlib.suppress(ApiError):
            b = await read_body(request)
            if isinstance(b, dict):
                opts = b
    q = request.query
    if q.get("propagationPolicy"):
        opts["propagationPolicy"] = q["propagationPolicy"]
    if q.get("dryRun"):
        opts["dryRun"] = [q["dryRun"]]
    return opts


async def delete(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
) -> web.Response:
    opts = await _delete_options(request)
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
        raise not_found(info, name)
    # Still there (finalizers, terminating namespace): the object, as the real server answers; gone: a Status
    # (pods answer the deleted object either way).
    if info.key == "namespaces" or (
        obj["metadata"].get("deletionTimestamp") and vc.peek(info.key, namespace, name) is not None
    ):
        return json_response(obj, 202 if info.key != "namespaces" else 200)
    if info.key == "pods":
        return json_response(obj)
    return json_response(status_ok(info, name, obj["metadata"].get("uid")))


async def delete_collection(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None
) -> web.Response:
    if "deletecollection" not in info.verbs:
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )
    opts = await _delete_options(request)
    q = request.query
    check_field_selector(info, q.get("fieldSelector"))
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
    return json_response(
        {
            "kind": info.list_kind_name,
            "apiVersion": info.api_version,
            "metadata": {"resourceVersion": vc.resource_version},
            "items": deleted,
        }
    )
