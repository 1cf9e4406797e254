"""PATCH requests: choosing the patch kind from the Content-Type, and server-side apply's request rules.

The patch algorithms themselves (JSON patch, merge patch, strategic merge, apply with field ownership) are
in devcluster.patch; this module holds what the real server checks around them (a field manager for apply,
matching apiVersion and kind, no strategic merge on custom resources, no renaming by patch) and where the
result goes (create for an apply of a missing object, else the shared update path).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devcluster import patch
from devcluster.objects import finish_update, prepare_create
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, VirtualCluster, clone, not_found
from devcluster.validation import check_body, check_immutable, validate
from devcluster.wire import dry_run, json_response, read_body, truthy


def apply_patch(ctype: str, current: dict, body: Any, info: ResourceInfo) -> dict:
    """`current` patched with `body` by the kind the Content-Type names (apply excepted: see `patch_object`)."""
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


async def patch_object(
    request: web.Request, vc: VirtualCluster, info: ResourceInfo, namespace: str | None, name: str
) -> web.Response:
    ctype = (request.content_type or "").lower()
    body = await read_body(request)
    old = vc.peek(info.key, namespace, name)
    if "apply-patch" in ctype:
        return await server_side_apply(request, vc, info, namespace, name, body, old)
    if old is None:
        raise not_found(info, name)
    new = apply_patch(ctype, old, body, info)
    if not isinstance(new, dict):
        raise ApiError(422, "Invalid", "the patch produced a non-object")
    check_immutable(info, old, new)
    return json_response(finish_update(request, vc, info, old, new))


async def server_side_apply(
    request: web.Request,
    vc: VirtualCluster,
    info: ResourceInfo,
    namespace: str | None,
    name: str,
    body: Any,
    old: dict | None,
) -> web.Response:
    """An apply patch: creates the object when `old` is None, else merges it under `fieldManager`'s ownership."""
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
    body = check_body(body, info, namespace, name)
    body["metadata"].pop("managedFields", None)
    if info.has_status:
        body.pop("status", None)
    force = truthy(q.get("force"))
    new = patch.server_side_apply(clone(old) if old else None, body, manager, force, info.api_version)
    if old is None:
        prepare_create(info, new)
        validate(info, new)
        return json_response(vc.create(info.key, new, dry_run=dry_run(request)), 201)
    check_immutable(info, old, new)
    return json_response(finish_update(request, vc, info, old, new, manager_tracking=False))
