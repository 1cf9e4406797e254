"""OpenAPI v2 and v3 documents generated from the resource table.

What clients use them for, and so what the documents must hold:
- kubectl and Helm decide whether the server validates fields itself by looking, in the OpenAPI v3 document
  of a group-version, for the PATCH operation tagged with the kind's `x-kubernetes-group-version-kind` and a
  `fieldValidation` query parameter (`dryRun` likewise for `kubectl diff`).  When found they send
  `fieldValidation=Strict` and skip client-side schema validation; so every resource gets its real paths
  and operations with those parameters.
- Schemas are deliberately open objects (`x-kubernetes-preserve-unknown-fields`) carrying the GVK
  extension: the emulator stores what it is given and does not re-implement every type's validation.
  CRDs contribute their own `openAPIV3Schema` when they have one.
- `/openapi/v3` lists group-versions with a `serverRelativeURL`; client-go replaces the whole request path
  with it, so it includes the virtual cluster's path prefix.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from devcluster import resources
from devcluster.resources import ResourceInfo

K8S_VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-devcluster",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_QUERY_PARAMS = {
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "Name associated with the actor or entity that is making these changes.",
    "fieldValidation": "Ignore, Warn or Strict: how to treat unknown or duplicate fields.",
}


def schema_name(info: ResourceInfo) -> str:
    if info.extra.get("crd"):
        rev = ".".join(reversed(info.group.split(".")))
        return f"{rev}.{info.version}.{info.kind}"
    group = info.group.split(".")[0] if info.group else "core"
    if info.group == "apiextensions.k8s.io":
        return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{info.version}.{info.kind}"
    if info.group.endswith(".k8s.io") and info.group not in ("apiextensions.k8s.io",):
        group = info.group.split(".")[0]
    return f"io.k8s.api.{group}.{info.version}.{info.kind}"


def _gvk(info: ResourceInfo) -> dict:
    return {"group": info.group, "version": info.version, "kind": info.kind}


def _schema(info: ResourceInfo, ref_prefix: str) -> dict:
    crd_schema = info.extra.get("schema")
    if crd_schema:
        sch = json.loads(json.dumps(crd_schema))
        sch.setdefault("type", "object")
        props = sch.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"$ref": f"{ref_prefix}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    else:
        sch = {
            "type": "object",
            "description": f"{info.kind} ({info.api_version}).",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"$ref": f"{ref_prefix}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    sch["x-kubernetes-group-version-kind"] = [_gvk(info)]
    return sch


def _object_meta() -> dict:
    return {
        "type": "object",
        "description": "Standard object metadata.",
        "properties": {
            "name": {"type": "string"},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "managedFields": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    }


def _paths(info: ResourceInfo, v3: bool, ref_prefix: str) -> dict:
    base = "/api/v1" if not info.group else f"/apis/{info.group}/{info.version}"
    coll = f"{base}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{base}/{info.plural}"
    item = f"{coll}/{{name}}"
    ref = {"$ref": ref_prefix + schema_name(info)}
    gvk = _gvk(info)

    def params(*names: str) -> list[dict]:
        out = []
        for n in names:
            p = {"name": n, "in": "query", "description": _QUERY_PARAMS.get(n, n), "uniqueItems": True}
            if v3:
                p["schema"] = {"type": "boolean" if n == "force" else "string"}
            else:
                p["type"] = "boolean" if n == "force" else "string"
            out.append(p)
        return out

    def op(verb: str, action: str, body: bool, qp: tuple[str, ...] = ()) -> dict:
        o: dict = {
            "operationId": f"{verb}{info.kind}",
            "tags": [info.group or "core_v1"],
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params(*qp),
            "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        }
        if v3:
            o["responses"]["200"]["content"] = {"application/json": {"schema": ref}}
            if body:
                # Strategic merge is accepted but not advertised: kubectl would otherwise compute apply
                # patches from these open schemas instead of its built-in type information.
                ctypes = (
                    [
                        "application/apply-patch+yaml",
                        "application/json-patch+json",
                        "application/merge-patch+json",
                    ]
                    if verb == "patch"
                    else ["application/json", "application/yaml"]
                )
                o["requestBody"] = {
                    "content": {
                        c: {"schema": ref if verb != "patch" else {"type": "object"}} for c in ctypes
                    },
                    "required": True,
                }
        else:
            o["responses"]["200"]["schema"] = ref
            if body:
                o["parameters"].append(
                    {
                        "name": "body",
                        "in": "body",
                        "required": True,
                        "schema": ref if verb != "patch" else {"type": "object"},
                    }
                )
        return o

    write = ("dryRun", "fieldManager", "fieldValidation")
    ns_param = {"name": "namespace", "in": "path", "required": True, "uniqueItems": True}
    name_param = {"name": "name", "in": "path", "required": True, "uniqueItems": True}
    if v3:
        ns_param["schema"] = {"type": "string"}
        name_param["schema"] = {"type": "string"}
    else:
        ns_param["type"] = "string"
        name_param["type"] = "string"
    out: dict = {}
    if "create" in info.verbs:
        out[coll] = {"post": op("create", "post", True, write), "get": op("list", "list", False)}
        if info.namespaced:
            out[coll]["parameters"] = [ns_param]
    if "get" in info.verbs:
        entry = {
            "get": op("read", "get", False),
            "put": op("replace", "put", True, write),
            "patch": op("patch", "patch", True, (*write, "force")),
            "delete": op("delete", "delete", False, ("dryRun",)),
            "parameters": ([ns_param] if info.namespaced else []) + [name_param],
        }
        out[item] = entry
        for sub in ("status", "scale"):
            if sub in info.subresources:
                out[f"{item}/{sub}"] = {
                    "get": op("read", "get", False),
                    "put": op("replace", "put", True, write),
                    "patch": op("patch", "patch", True, (*write, "force")),
                    "parameters": entry["parameters"],
                }
                if sub == "scale":
                    for m in ("get", "put", "patch"):
                        out[f"{item}/{sub}"][m]["x-kubernetes-group-version-kind"] = {
                            "group": "autoscaling",
                            "version": "v1",
                            "kind": "Scale",
                        }
    return out


def v3_document(group: str, version: str, extra: tuple[ResourceInfo, ...] = ()) -> dict:
    """The OpenAPI v3 document of one group-version (`/openapi/v3/apis/<group>/<version>`)."""
    return _v3_cached(group, version, extra)


@lru_cache(maxsize=256)
def _v3_cached(group: str, version: str, extra: tuple[ResourceInfo, ...]) -> dict:
    ref_prefix = "#/components/schemas/"
    infos = [r for r in (*resources.RESOURCES, *extra) if r.group == group and r.version == version]
    paths: dict = {}
    schemas: dict = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _object_meta()}
    for info in infos:
        paths.update(_paths(info, True, ref_prefix))
        schemas[schema_name(info)] = _schema(info, ref_prefix)
        schemas[schema_name(info) + "List"] = {
            "type": "object",
            "x-kubernetes-group-version-kind": [dict(_gvk(info), kind=info.list_kind_name)],
            "x-kubernetes-preserve-unknown-fields": True,
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": K8S_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def v3_index(prefix: str, extra: tuple[ResourceInfo, ...] = ()) -> dict:
    """`/openapi/v3`: group-version -> serverRelativeURL (with the cluster's path prefix and a content hash)."""
    gvs = sorted({(r.group, r.version) for r in (*resources.RESOURCES, *extra)})
    paths = {}
    for g, v in gvs:
        rel = "api/v1" if not g else f"apis/{g}/{v}"
        digest = hashlib.sha256(json.dumps(v3_document(g, v, extra), sort_keys=True).encode()).hexdigest()[
            :32
        ]
        paths[rel] = {"serverRelativeURL": f"{prefix}/openapi/v3/{rel}?hash={digest.upper()}"}
    return {"paths": paths}


@lru_cache(maxsize=64)
def v2_document(extra: tuple[ResourceInfo, ...] = ()) -> dict:
    """The OpenAPI v2 (swagger) document for every served resource."""
    ref_prefix = "#/definitions/"
    paths: dict = {}
    defs: dict = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _object_meta()}
    for info in (*resources.RESOURCES, *extra):
        paths.update(_paths(info, False, ref_prefix))
        defs[schema_name(info)] = _schema(info, ref_prefix)
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": K8S_VERSION["gitVersion"]},
        "paths": paths,
        "definitions": defs,
    }
