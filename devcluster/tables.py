"""`kubectl get` output: the server-side `Table` form of lists, single objects and watch events.

kubectl asks for `Accept: ...;as=Table` and prints the columns the server chooses; the real server has
per-type printers, of which the emulator copies the ones people look at (nodes, pods, deployments,
namespaces).  Every other resource gets Name and Age.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


def age(ts: str | None) -> str:
    """A creationTimestamp as kubectl's AGE column shows it (`45s`, `12m`, `5h`, `3d`)."""
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


def _age_of(o: dict) -> str:
    return age(o["metadata"].get("creationTimestamp"))


# Resource key -> columns after Name: (title, type, cell of an object).
COLUMNS: dict[str, list[tuple[str, str, Callable[[dict], Any]]]] = {
    "nodes": [
        ("Status", "string", _node_status),
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
        ("Age", "string", _age_of),
        (
            "Version",
            "string",
            lambda o: ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""),
        ),
    ],
    "pods": [
        ("Ready", "string", _pod_ready),
        ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "Pending")),
        (
            "Restarts",
            "integer",
            lambda o: sum(
                int(c.get("restartCount") or 0)
                for c in (o.get("status") or {}).get("containerStatuses") or []
            ),
        ),
        ("Age", "string", _age_of),
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
        ("Age", "string", _age_of),
    ],
    "namespaces": [
        ("Status", "string", lambda o: (o.get("status") or {}).get("phase", "Active")),
        ("Age", "string", _age_of),
    ],
}
_DEFAULT_COLUMNS: list[tuple[str, str, Callable[[dict], Any]]] = [("Age", "string", _age_of)]


def table(key: str, objs: list[dict], rv: str, cont: str | None = None) -> dict:
    """A `meta.k8s.io/v1` Table of `objs` (each row carries its full object, as kubectl expects)."""
    cols = COLUMNS.get(key, _DEFAULT_COLUMNS)
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


def wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")
