"""Watch requests: a chunked stream of `{"type", "object"}` lines for one resource (or one object).

What the stream starts with depends on the request, as on the real server: the current objects (no
resourceVersion, or "0"), the current objects and a bookmark marking their end (`sendInitialEvents`, used
by client-go reflectors and `kubectl wait`), the events since a resourceVersion the store still remembers,
or a 410 Expired error when it does not.  Then live events until `timeoutSeconds` (at most
MAX_WATCH_SECONDS), the client leaves, or the watcher falls too far behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from devcluster import tables
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, Selector, VirtualCluster, Watcher
from devcluster.validation import check_field_selector
from devcluster.wire import JSON, dumps, truthy

MAX_WATCH_SECONDS = 1800


async def watch(
    request: web.Request,
    vc: VirtualCluster,
    info: ResourceInfo,
    namespace: str | None,
    name: str | None = None,
) -> web.StreamResponse:
    q = request.query
    fs = q.get("fieldSelector") or None
    check_field_selector(info, fs)
    if name:
        fs = f"metadata.name={name}" + (f",{fs}" if fs else "")
    watcher = Watcher(info.key, namespace, Selector(q.get("labelSelector") or None, fs))
    rv_param = q.get("resourceVersion") or ""
    initial: list[tuple[str, dict]] = []
    if truthy(q.get("sendInitialEvents")):
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
            # Replay the remembered events through a watcher of the same selector, so the history is filtered
            # (and turned into ADDED/DELETED at selector edges) exactly as live events are.
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
    as_table = tables.wants_table(request)

    def encode(t: str, o: dict) -> bytes:
        if as_table and t in ("ADDED", "MODIFIED", "DELETED"):
            o = tables.table(info.key, [o], o["metadata"].get("resourceVersion", ""))  # kubectl get -w
        return dumps({"type": t, "object": o}).encode() + b"\n"

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
