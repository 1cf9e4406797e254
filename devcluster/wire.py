"""What every API handler reads from a request and writes back: JSON answers, Status bodies, request bodies.

Kept in one place so each handler module (objects, patch requests, subresources, watch, discovery) answers
with the same encoding and the same `Status` shapes the real API server uses.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from aiohttp import web

from devcluster import protobuf
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError

JSON = "application/json"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body).encode(), status=status, content_type=JSON)


def truthy(v: str | None) -> bool:
    """A boolean query parameter as the real server reads it (`watch=1`, `watch=true`, ...)."""
    return (v or "").lower() in ("1", "true", "yes")


def status_ok(info: ResourceInfo, name: str, uid: str | None = None) -> dict:
    """The `Status` the real server answers to a delete that removed the object at once."""
    details = {"name": name, "group": info.group, "kind": info.plural}
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


async def read_body(request: web.Request) -> Any:
    """The decoded request body (JSON, YAML or protobuf), None when empty; undecodable bodies are 4xx."""
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


def field_manager(request: web.Request) -> str:
    """The manager recorded in managedFields: `fieldManager`, else the client's User-Agent product, as the
    real server derives it."""
    m = request.query.get("fieldManager")
    if m:
        return m
    ua = request.headers.get("User-Agent", "unknown")
    return ua.split("/", 1)[0] or "unknown"


def dry_run(request: web.Request) -> bool:
    return request.query.get("dryRun") == "All"
