"""Faults and the admin API under `/_devcluster/` that sets them.

Cluster-level faults (`unreachable`, `slow`, `error`) live on the VirtualCluster and act on every request to
it before it is routed (`apply_faults`); node and job faults (`node-not-ready`, `job-fail`, ...) are handed
to the simulation.  The admin API lists the hosted clusters and sets faults; it is authenticated with the
server's admin token, never a cluster's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devcluster.store import ApiError, VirtualCluster
from devcluster.wire import json_response

if TYPE_CHECKING:
    from devcluster.server import ApiServer


async def apply_faults(request: web.Request, vc: VirtualCluster) -> None:
    """Act out the cluster's faults on one request: hold it, delay it, or fail it."""
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


async def set_fault(
    sim_module: Any,
    vc: VirtualCluster,
    kind: str,
    target: str | None = None,
    delay: float | None = None,
    value: Any = None,
) -> None:
    """Cluster-level faults are kept on the cluster; node and job faults go to the simulation."""
    if kind in ("unreachable", "slow", "error"):
        vc.faults = dict(vc.faults or {})
        vc.faults[kind] = delay
    elif kind == "clear":
        if target:
            if vc.faults:
                vc.faults.pop(target, None)
        else:
            vc.faults = None
        fn = getattr(sim_module, "set_fault", None)
        if fn is not None:
            await fn(vc, kind, target, value)
    elif kind in ("node-not-ready", "job-fail") or kind:
        fn = getattr(sim_module, "set_fault", None)
        if fn is None:
            raise ApiError(501, "NotImplemented", f"fault {kind!r} needs the simulation")
        await fn(vc, kind, target, value if value is not None else True)
    else:
        raise ApiError(400, "BadRequest", "fault kind is required")


async def admin_request(server: ApiServer, request: web.Request, rest: str) -> web.StreamResponse:
    """`GET clusters` (names, URLs, faults, node counts) and `POST|PUT clusters/<name>/faults`."""
    parts = [p for p in rest.split("/") if p]
    if parts == ["clusters"] and request.method == "GET":
        return json_response(
            {
                "items": [
                    {
                        "name": n,
                        "server": server.cluster_url(n),
                        "faults": sorted((vc.faults or {}).keys()),
                        "nodes": len(vc.iter_objects("nodes")),
                    }
                    for n, vc in server.clusters.items()
                ]
            }
        )
    if (
        len(parts) == 3
        and parts[0] == "clusters"
        and parts[2] == "faults"
        and request.method in ("POST", "PUT")
    ):
        vc = server.clusters.get(parts[1])
        if vc is None:
            raise ApiError(404, "NotFound", f'cluster "{parts[1]}" not found')
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, "BadRequest", "body must be JSON") from exc
        await server.set_fault(
            vc, str(body.get("kind") or ""), body.get("target"), body.get("delay"), body.get("value")
        )
        return json_response({"name": vc.name, "faults": sorted((vc.faults or {}).keys())})
    raise ApiError(404, "NotFound", "unknown admin endpoint")
