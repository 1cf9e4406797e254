"""Discovery: the documents clients read before they touch a resource.

`/api` and `/apis` (APIVersions, APIGroupList, APIGroup), the APIResourceList of each group version (with
the subresources the emulator serves), the root path list, and the `/openapi/v2` and `/openapi/v3` answers
whose documents devcluster.openapi builds.  Custom resources appear as soon as their CRD is stored, because
every answer is built from the cluster's resources at request time.
"""

from __future__ import annotations

from aiohttp import web

from devcluster import openapi
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, VirtualCluster
from devcluster.wire import json_response

ROOT_PATHS = {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/openapi/v2", "/openapi/v3", "/version"]}


def api_versions(server_address: str) -> dict:
    """The answer to `/api`: the core group has only v1."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list(groups: dict[str, dict[str, list[ResourceInfo]]]) -> dict:
    """The answer to `/apis`: every named group (the core group "" is served under `/api`)."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [api_group(g, vs) for g, vs in groups.items() if g],
    }


def api_group(group: str, versions: dict[str, list[ResourceInfo]]) -> dict:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}


def api_resource_list(gv: str, infos: list[ResourceInfo]) -> dict:
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


def openapi_response(request: web.Request, vc: VirtualCluster, rest: str) -> web.Response:
    """`/openapi/v2`, the `/openapi/v3` index and its per group-version documents."""
    extra = tuple(vc.custom_resources())
    if rest.rstrip("/") == "/openapi/v2":
        if "json" not in request.headers.get("Accept", "json") and "*/*" not in request.headers.get(
            "Accept", ""
        ):
            # Only the JSON form is served; protobuf-only readers fall back to built-in type data.
            raise ApiError(406, "NotAcceptable", "only application/json is available for /openapi/v2")
        return json_response(openapi.v2_document(extra))
    if rest.rstrip("/") == "/openapi/v3":
        return json_response(openapi.v3_index(f"/clusters/{vc.name}", extra))
    tail = rest[len("/openapi/v3/") :].strip("/").split("/")
    if tail[:2] == ["api", "v1"] and len(tail) == 2:
        return json_response(openapi.v3_document("", "v1", extra))
    if tail[0] == "apis" and len(tail) == 3:
        doc = openapi.v3_document(tail[1], tail[2], extra)
        if doc["paths"]:
            return json_response(doc)
    raise ApiError(404, "NotFound", "the server could not find the requested resource")
