"""PATCH semantics of the emulated API server: JSON merge, JSON patch, strategic merge and server-side apply.

- JSON patch (RFC 6902) uses the `jsonpatch` library; JSON merge patch (RFC 7386) is a few lines.
- Strategic merge patch is hand-written: no maintained Python implementation exists.  It follows
  apimachinery's `strategicpatch` for what clients send: per-field list merge keys (containers/env/
  volumes by name, volumeMounts by mountPath, container ports by containerPort, service ports by port, ...),
  the `$patch: replace|delete|merge` directives, `$retainKeys`, `$deleteFromPrimitiveList/<f>` and
  `$setElementOrder/<f>` (kubectl's client-side apply sends the last two).  Lists without a merge key are
  replaced, as for the real types (e.g. tolerations, args).
- Server-side apply tracks field ownership in `metadata.managedFields` in the real FieldsV1 shape
  (`f:<field>`, `k:{"name":"x"}` for keyed list items).  A field is owned as a leaf: a scalar, an atomic
  list, or an empty map.  Applying reports a 409 Conflict when another manager owns a field the config
  sets to a different value (unless `force`), removes fields the manager applied before but no longer
  does (unless someone else owns them), and no-op applies keep the object unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonpatch

from devcluster.store import ApiError, clone

# Field name -> merge key, for lists merged item-by-item.  "ports" is decided from the items' shape
# (containers use containerPort, Services use port).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
}
# Lists of scalars merged as sets (patchStrategy=merge on a primitive list).
PRIMITIVE_MERGE = frozenset({"finalizers"})


def _ports_key(*lists: list | None) -> str:
    for lst in lists:
        for item in lst or ():
            if isinstance(item, dict) and "containerPort" in item:
                return "containerPort"
    return "port"


def merge_key(field: str, *lists: list | None) -> str | None:
    if field == "ports":
        return _ports_key(*lists)
    return MERGE_KEYS.get(field)


# ------------------------------------------------------------------------------------------ merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_patch(target: dict, ops: Any) -> dict:
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
        ) from exc
    except (TypeError, KeyError, IndexError) as exc:
        raise ApiError(400, "BadRequest", f"invalid json patch: {exc}") from exc


# ------------------------------------------------------------------------------------------ strategic merge


def _strip_directives(v: Any) -> Any:
    if isinstance(v, dict):
        return {
            k: _strip_directives(x)
            for k, x in v.items()
            if not (
                k == "$patch"
                or k == "$retainKeys"
                or k.startswith(("$setElementOrder/", "$deleteFromPrimitiveList/"))
            )
        }
    if isinstance(v, list):
        return [_strip_directives(x) for x in v if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    return v


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to `original` (both JSON-shaped) and return the result."""
    if not isinstance(patch, dict):
        return clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    result = clone(original) if isinstance(original, dict) else {}
    orders: dict[str, list] = {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys"):
            continue
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in (v or [])]
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            if v.get("$patch") == "delete":
                result.pop(k, None)
            else:
                result[k] = strategic_merge(result.get(k), v)
        elif isinstance(v, list):
            result[k] = _merge_list(k, result.get(k), v)
        else:
            result[k] = v
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for k in list(result):
            if k not in retain:
                del result[k]
    for field, order in orders.items():
        result[field] = _apply_order(field, result.get(field), order)
    return result


def _merge_list(field: str, original: Any, patch: list) -> list:
    original = original if isinstance(original, list) else []
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [
            _strip_directives(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")
        ]
    if field in PRIMITIVE_MERGE:
        out = list(original)
        for x in patch:
            if x not in out:
                out.append(x)
        return out
    mk = merge_key(field, original, patch)
    if mk is None or not all(isinstance(x, dict) for x in patch):
        return _strip_directives(patch)
    out = [clone(x) for x in original]
    for item in patch:
        kv = item.get(mk)
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(mk) == kv), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out


def _apply_order(field: str, items: Any, order: list) -> Any:
    """Reorder `items` following kubectl's $setElementOrder list; items not named keep their place after."""
    if not isinstance(items, list) or not isinstance(order, list):
        return items
    if order and isinstance(order[0], dict):
        mk = merge_key(field, items, order) or next(iter(order[0]), None)
        if mk is None:
            return items
        keyed = {json.dumps(i.get(mk)): i for i in items if isinstance(i, dict)}
        head = [keyed.pop(json.dumps(o.get(mk))) for o in order if json.dumps(o.get(mk)) in keyed]
        return head + [i for i in items if isinstance(i, dict) and json.dumps(i.get(mk)) in keyed]
    head = [o for o in order if o in items]
    return head + [i for i in items if i not in head]


# ------------------------------------------------------------------------------------------ server-side apply

Path = tuple[str, ...]


def _kelem(item: dict, mk: str) -> str:
    return "k:" + json.dumps({mk: item.get(mk)}, separators=(",", ":"))


def field_set(obj: Any, prefix: Path = ()) -> set[Path]:
    """Leaf field paths of an applied configuration (FieldsV1 element names)."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj and prefix:
            out.add(prefix)
        for k, v in obj.items():
            p = (*prefix, "f:" + k)
            if isinstance(v, dict):
                out |= field_set(v, p) if v else {p}
            elif isinstance(v, list):
                mk = merge_key(k, v)
                if mk and v and all(isinstance(i, dict) and mk in i for i in v):
                    for item in v:
                        ip = (*p, _kelem(item, mk))
                        sub = field_set(item, ip)
                        out |= sub or {ip}
                else:
                    out.add(p)
            else:
                out.add(p)
    return out


def _step(cur: Any, elem: str) -> Any:
    if cur is None:
        return None
    if elem.startswith("f:"):
        return cur.get(elem[2:]) if isinstance(cur, dict) else None
    if elem.startswith("k:") and isinstance(cur, list):
        want = json.loads(elem[2:])
        for item in cur:
            if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
                return item
    return None


_MISSING = object()


def value_at(obj: Any, path: Path) -> Any:
    cur = obj
    for elem in path:
        cur = _step(cur, elem)
        if cur is None:
            return _MISSING
    return cur


def remove_at(obj: Any, path: Path) -> None:
    parent = obj
    for elem in path[:-1]:
        parent = _step(parent, elem)
        if parent is None:
            return
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        want = json.loads(last[2:])
        parent[:] = [
            i for i in parent if not (isinstance(i, dict) and all(i.get(k) == v for k, v in want.items()))
        ]


def _is_key_field(path: Path) -> bool:
    return len(path) >= 2 and path[-2].startswith("k:") and path[-1][2:] in json.loads(path[-2][2:])


def _prune_empty(obj: Any, path: Path) -> None:
    """After removing a leaf, drop maps/list items left empty along its path (apply removes whole subtrees)."""
    for depth in range(len(path) - 1, 0, -1):
        v = value_at(obj, path[:depth])
        if v in ({}, []) or (isinstance(v, dict) and path[depth - 1].startswith("k:") and len(v) <= 1):
            remove_at(obj, path[:depth])
        else:
            break


def apply_merge(base: Any, applied: Any) -> Any:
    """Merge an applied configuration into an object: maps recursively, keyed lists by key, else replace."""
    if not isinstance(applied, dict) or not isinstance(base, dict):
        return clone(applied)
    out = clone(base)
    for k, v in applied.items():
        if isinstance(v, dict):
            out[k] = apply_merge(out.get(k), v) if v else (out.get(k) if isinstance(out.get(k), dict) else {})
        elif isinstance(v, list):
            mk = merge_key(k, v)
            cur = out.get(k)
            if mk and isinstance(cur, list) and all(isinstance(i, dict) and mk in i for i in v):
                merged = [clone(i) for i in cur]
                for item in v:
                    idx = next(
                        (n for n, o in enumerate(merged) if isinstance(o, dict) and o.get(mk) == item[mk]),
                        None,
                    )
                    if idx is None:
                        merged.append(clone(item))
                    else:
                        merged[idx] = apply_merge(merged[idx], item)
                out[k] = merged
            else:
                out[k] = clone(v)
        else:
            out[k] = v
    return out


def fields_v1(paths: set[Path]) -> dict:
    root: dict = {}
    for p in sorted(paths):
        node = root
        for elem in p:
            node = node.setdefault(elem, {})
    return root


def paths_of(fields: dict, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for k, v in (fields or {}).items():
        if k == ".":
            continue
        p = (*prefix, k)
        if isinstance(v, dict) and any(x != "." for x in v):
            out |= paths_of(v, p)
        else:
            out.add(p)
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _readable(path: Path) -> str:
    return "".join("." + e[2:] if e.startswith("f:") else "[" + e[2:] + "]" for e in path)


_IGNORED_TOP = ("f:apiVersion", "f:kind", "f:status")
_IGNORED_META = frozenset(
    {
        "f:name",
        "f:namespace",
        "f:resourceVersion",
        "f:uid",
        "f:managedFields",
        "f:creationTimestamp",
        "f:generation",
    }
)


def _owned(paths: set[Path]) -> set[Path]:
    return {
        p
        for p in paths
        if p
        and p[0] not in _IGNORED_TOP
        and not (p[0] == "f:metadata" and len(p) > 1 and p[1] in _IGNORED_META)
    }


def server_side_apply(
    current: dict | None, applied: dict, manager: str, force: bool, api_version: str
) -> dict:
    """Result of applying `applied` as `manager` onto `current` (None = create)."""
    if not isinstance(applied, dict):
        raise ApiError(400, "BadRequest", "apply patch must be an object")
    new_paths = _owned(field_set(applied))
    if current is None:
        obj = clone(applied)
        obj.setdefault("metadata", {})["managedFields"] = [_entry(manager, "Apply", api_version, new_paths)]
        return obj
    managed = clone((current.get("metadata") or {}).get("managedFields") or [])
    mine = next((e for e in managed if e.get("manager") == manager and e.get("operation") == "Apply"), None)
    old_paths = paths_of(mine.get("fieldsV1") or {}) if mine else set()
    conflicts: list[tuple[str, Path]] = []
    others = [e for e in managed if e is not mine]
    for e in others:
        theirs = paths_of(e.get("fieldsV1") or {})
        for p in new_paths & theirs:
            if value_at(current, p) != value_at(applied, p):
                conflicts.append((e.get("manager") or "", p))
    if conflicts and _has_last_applied(current):
        # Moving from client-side to server-side apply transfers the client-side manager's fields without
        # conflicts (the apiserver's last-applied manager does the same).
        conflicts_csa = [c for c in conflicts if c[0] == CSA_MANAGER]
        if len(conflicts_csa) == len(conflicts):
            force = True
    if conflicts and not force:
        lines = "; ".join(f'conflict with "{m}": {_readable(p)}' for m, p in conflicts[:10])
        raise ApiError(
            409,
            "Conflict",
            f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: {lines}",
            {
                "causes": [
                    {
                        "reason": "FieldManagerConflict",
                        "message": f'conflict with "{m}"',
                        "field": _readable(p),
                    }
                    for m, p in conflicts
                ]
            },
        )
    # Forced (or non-conflicting shared) fields: the applier takes them over.
    taken = {p for _, p in conflicts}
    kept_others = []
    for e in others:
        theirs = paths_of(e.get("fieldsV1") or {}) - taken
        if theirs:
            if taken:
                e = dict(e, fieldsV1=fields_v1(theirs))
            kept_others.append(e)
    obj = clone(current)
    still_owned = (
        set().union(*(paths_of(e.get("fieldsV1") or {}) for e in kept_others)) if kept_others else set()
    )
    drop = [
        p
        for p in old_paths - new_paths
        if p not in still_owned and not any(q[: len(p)] == p for q in still_owned)
    ]
    # Key fields of list items go last: dropping an item's key drops the item, and the item must still be
    # findable by its key while its other fields are removed.
    for p in sorted(drop, key=lambda p: (_is_key_field(p), -len(p))):
        if _is_key_field(p):
            remove_at(obj, p[:-1])
        else:
            remove_at(obj, p)
        _prune_empty(obj, p)
    body = {k: v for k, v in applied.items() if k not in ("status",)}
    obj = apply_merge(obj, body)
    entry = mine if mine and old_paths == new_paths else _entry(manager, "Apply", api_version, new_paths)
    managed_new = [*kept_others, entry] if new_paths else kept_others
    obj["metadata"]["managedFields"] = managed_new
    return obj


CSA_MANAGER = "kubectl-client-side-apply"


def _has_last_applied(obj: dict) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return "kubectl.kubernetes.io/last-applied-configuration" in annotations


def _entry(manager: str, operation: str, api_version: str, paths: set[Path]) -> dict:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": _now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(paths),
    }


def track_update(old: dict | None, new: dict, manager: str, api_version: str) -> None:
    """Record an Update-operation manager for the fields a non-apply write changed (in place on `new`).

    Fields it changed are taken from their previous owners, like the real field manager does; this is what
    makes a later apply of a different value by someone else report a conflict.
    """
    changed = _owned(
        {p for p in field_set(_no_meta_noise(new)) if old is None or value_at(old, p) != value_at(new, p)}
    )
    managed = clone(((old or {}).get("metadata") or {}).get("managedFields") or [])
    sent = (new.get("metadata") or {}).get("managedFields")
    if sent is not None:
        sent = [_normal_time(e) for e in sent if isinstance(e, dict)]
    if sent is not None and sent != managed:
        # The client rewrote ownership itself (kubectl does when moving from client-side to server-side apply).
        managed = clone(sent)
    if not changed:
        if managed:
            new["metadata"]["managedFields"] = managed
        return
    out = []
    mine_paths: set[Path] = set()
    for e in managed:
        paths = paths_of(e.get("fieldsV1") or {})
        if e.get("manager") == manager and e.get("operation") == "Update":
            mine_paths = paths
            continue
        rest = paths - changed
        if rest:
            out.append(e if rest == paths else dict(e, fieldsV1=fields_v1(rest)))
    out.append(_entry(manager, "Update", api_version, mine_paths | changed))
    new["metadata"]["managedFields"] = out


def _normal_time(entry: dict) -> dict:
    """An entry with its `time` in the server's form: clients send back the same instant in other spellings
    ("+00:00" for "Z"), which must not look like a change (a no-op update keeps its resourceVersion)."""
    t = entry.get("time")
    if not isinstance(t, str) or t.endswith("Z"):
        return entry
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        return entry
    return dict(entry, time=when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _no_meta_noise(obj: dict) -> dict:
    o = dict(obj)
    meta = dict(o.get("metadata") or {})
    meta.pop("managedFields", None)
    o["metadata"] = meta
    o.pop("status", None)
    return o
