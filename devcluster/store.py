"""Object store of one virtual cluster: the etcd + registry layer of the emulated API server.

Design:
- One `VirtualCluster` per hosted cluster.  Objects live in plain dicts keyed by resource key
  ("pods", "deployments.apps", ...) then by (namespace, name); cluster-scoped objects use namespace "".
  All per-cluster structures beyond the object table are created lazily (watchers, history, CRD table,
  faults) so thousands of idle clusters stay cheap; there are no per-cluster tasks or threads.
- Everything runs on the server's asyncio loop thread, so no locks: a change is committed, then watchers
  and subscribers are told synchronously, in commit order.
- Stored objects are never handed out: every read returns a deep copy, every write stores a copy, so a
  caller mutating what it got cannot corrupt the store (the same guarantee etcd's serialisation gives).
- resourceVersion is a per-cluster counter; a bounded history of recent changes lets a watch resume from a
  resourceVersion (older than the history -> 410 Gone, like a compacted etcd).
- Persistence is optional and outside the store: `journal`, when set, is called with every committed change
  (devcluster.persist appends it to the state directory's journal); `export_state` / `from_state` / `replay`
  turn a cluster into plain data and back.  Without a state directory `journal` stays None and a commit pays
  one attribute test for it.
- Semantics follow the real registries where clients notice: generateName, 409 AlreadyExists / Conflict on
  a stale resourceVersion, 404 for objects in a missing namespace, 403 in a terminating namespace,
  generation bumps on spec changes only, no-op updates keep the resourceVersion, finalizers delay deletion,
  namespaces go Terminating before their contents are removed, and ownerReferences are garbage collected
  in the background (dependents removed on the next loop iteration, like the GC controller).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from devcluster import resources
from devcluster.resources import ResourceInfo

log = logging.getLogger(__name__)

# Per-cluster change history kept for watch resumption (like the apiserver's watch cache; small because
# thousands of clusters each keep one and entries pin old object versions).
HISTORY_SIZE = 256
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"
# Kinds whose names only need to be valid path segments (RBAC names like "system:controller:x").
_PATH_SEGMENT_NAMES = frozenset(
    {
        "roles.rbac.authorization.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "events",
        "events.events.k8s.io",
    }
)
_SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ApiError(Exception):
    """An error the API server answers with a Kubernetes `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{info.plural}{"." + info.group if info.group else ""} "{name}" not found',
        {"name": name, "group": info.group, "kind": info.plural},
    )


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clone(obj: Any) -> Any:
    """Deep copy of JSON-shaped data; hand-written because copy.deepcopy is several times slower here."""
    if isinstance(obj, dict):
        return {k: clone(v) if isinstance(v, dict | list) else v for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) if isinstance(v, dict | list) else v for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- selectors


def _split_top(s: str) -> list[str]:
    """Split on commas outside parentheses ("a in (x,y),b" -> ["a in (x,y)", "b"])."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([^\s!=]+)\s+(in|notin)\s+\((.*)\)$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _label_key(key: str, part: str) -> str:
    """A label key as the real parser accepts it: [DNS-subdomain prefix/]name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if (prefix and not _DNS1123_SUBDOMAIN.match(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ApiError(
            400, "BadRequest", f"unable to parse requirement: invalid label key {key!r} in {part!r}"
        )
    return key


def _label_values(values: Iterable[str], part: str) -> frozenset[str]:
    for v in values:
        if v and (len(v) > 63 or not _LABEL_NAME.match(v)):
            raise ApiError(
                400, "BadRequest", f"unable to parse requirement: invalid label value {v!r} in {part!r}"
            )
    return frozenset(values)


@lru_cache(maxsize=512)
def parse_label_selector(sel: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    """Parse a label selector into (key, op, values) requirements; op in = != in notin exists !exists."""
    reqs = []
    for part in _split_top(sel):
        m = _SET_RE.match(part)
        if m:
            values = [v.strip() for v in m.group(3).split(",") if v.strip()]
            reqs.append((_label_key(m.group(1), part), m.group(2), _label_values(values, part)))
        elif "!=" in part or "==" in part or "=" in part:
            op = "!=" if "!=" in part else "==" if "==" in part else "="
            k, v = part.split(op, 1)
            reqs.append(
                (_label_key(k.strip(), part), "!=" if op == "!=" else "=", _label_values([v.strip()], part))
            )
        elif part.startswith("!"):
            reqs.append((_label_key(part[1:].strip(), part), "!exists", frozenset()))
        else:
            reqs.append((_label_key(part, part), "exists", frozenset()))
    return tuple(reqs)


def labels_match(labels: dict | None, reqs: Iterable[tuple[str, str, frozenset[str]]]) -> bool:
    labels = labels or {}
    for key, op, values in reqs:
        present = key in labels
        val = labels.get(key)
        if op == "=" and val not in values:
            return False
        if op == "!=" and present and val in values:
            return False
        if op == "in" and val not in values:
            return False
        if op == "notin" and present and val in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


@lru_cache(maxsize=512)
def parse_field_selector(sel: str) -> tuple[tuple[tuple[str, ...], bool, str], ...]:
    """Parse "a.b=x,c!=y" into (path, equal?, value) requirements."""
    reqs = []
    for part in _split_top(sel):
        if "!=" in part:
            k, v = part.split("!=", 1)
            eq = False
        elif "==" in part:
            k, v = part.split("==", 1)
            eq = True
        elif "=" in part:
            k, v = part.split("=", 1)
            eq = True
        else:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        reqs.append((tuple(k.strip().split(".")), eq, v.strip()))
    return tuple(reqs)


def _field_value(obj: dict, path: tuple[str, ...]) -> str:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(obj: dict, reqs: Iterable[tuple[tuple[str, ...], bool, str]]) -> bool:
    return all((_field_value(obj, path) == value) == eq for path, eq, value in reqs)


class Selector:
    """A parsed label + field selector pair; `None` parts match everything."""

    __slots__ = ("fields", "labels")

    def __init__(self, label_selector: str | None = None, field_selector: str | None = None) -> None:
        self.labels = parse_label_selector(label_selector) if label_selector else None
        self.fields = parse_field_selector(field_selector) if field_selector else None

    def matches(self, obj: dict) -> bool:
        if self.labels is not None and not labels_match(
            (obj.get("metadata") or {}).get("labels"), self.labels
        ):
            return False
        return self.fields is None or fields_match(obj, self.fields)


# ---------------------------------------------------------------------------------------------- watchers


class Watcher:
    """One open watch: a filter plus an asyncio queue the HTTP handler drains."""

    __slots__ = ("key", "namespace", "overflowed", "queue", "selector")

    def __init__(self, key: str, namespace: str | None, selector: Selector) -> None:
        self.key = key
        self.namespace = namespace
        self.selector = selector
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.overflowed = False

    def offer(self, event_type: str, obj: dict, old: dict | None) -> None:
        if self.namespace and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return
        now = self.selector.matches(obj)
        before = old is not None and self.selector.matches(old)
        # An object entering or leaving the selector is seen as ADDED / DELETED, as the real watch cache does.
        if event_type == "MODIFIED":
            if now and not before:
                event_type = "ADDED"
            elif before and not now:
                event_type = "DELETED"
            elif not now:
                return
        elif not now:
            return
        try:
            self.queue.put_nowait((event_type, obj))
        except asyncio.QueueFull:
            # A reader too slow to keep up is cut off (the handler closes the stream); the client re-lists,
            # as it would when a real apiserver drops a slow watcher.
            self.overflowed = True


# ---------------------------------------------------------------------------------------------- the store


class VirtualCluster:
    """One virtual cluster's objects and change feed (see the module docstring)."""

    __slots__ = (
        "_crd_infos",
        "_history",
        "_objects",
        "_rv",
        "_subscribers",
        "_watchers",
        "faults",
        "journal",
        "loop",
        "name",
        "openshift",
        "sim",
        "token",
        "uid",
    )

    def __init__(
        self,
        name: str,
        token: str,
        loop: asyncio.AbstractEventLoop | None = None,
        openshift: bool = False,
        *,
        bootstrap: bool = True,
    ) -> None:
        self.name = name
        self.token = token
        self.loop = loop
        self.sim: object | None = None
        self.openshift = openshift
        self.uid = str(uuid.uuid4())
        self.faults: dict | None = None
        self._objects: dict[str, dict[tuple[str, str], dict]] = {}
        self._rv = 0
        self._subscribers: list[Callable] | None = None
        self._watchers: list[Watcher] | None = None
        self._history: deque | None = None
        self._crd_infos: dict[tuple[str, str, str], ResourceInfo] | None = None
        # Called as journal(cluster, event_type, key, obj) after each committed change (devcluster.persist).
        self.journal: Callable[[VirtualCluster, str, str, dict], None] | None = None
        if bootstrap:  # a restored cluster (from_state) brings its own namespaces
            for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
                self.create("namespaces", {"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}})

    # ------------------------------------------------------------------ resource table
    def resource(self, key: str) -> ResourceInfo:
        info = resources.BY_KEY.get(key)
        if info is None and self._crd_infos:
            for ri in self._crd_infos.values():
                if ri.key == key:
                    return ri
        if info is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({key})")
        return info

    def resource_by_gvr(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        info = resources.BY_GVR.get((group, version, plural))
        if info is None and self._crd_infos:
            info = self._crd_infos.get((group, version, plural))
        return info

    def custom_resources(self) -> list[ResourceInfo]:
        return list(self._crd_infos.values()) if self._crd_infos else []

    def _register_crd(self, crd: dict) -> None:
        self._unregister_crd(crd["metadata"]["name"])
        infos = resources.crd_resources(crd)
        if infos:
            if self._crd_infos is None:
                self._crd_infos = {}
            for ri in infos:
                self._crd_infos[(ri.group, ri.version, ri.plural)] = ri

    def _unregister_crd(self, crd_name: str) -> None:
        if not self._crd_infos:
            return
        for k in [k for k, ri in self._crd_infos.items() if ri.extra.get("crd") == crd_name]:
            del self._crd_infos[k]

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    # ------------------------------------------------------------------ reads
    def _table(self, key: str) -> dict[tuple[str, str], dict]:
        t = self._objects.get(key)
        if t is None:
            t = self._objects[key] = {}
        return t

    def peek(self, key: str, namespace: str | None, name: str) -> dict | None:
        """The stored object itself (no copy): for the server's read-only paths on the loop thread."""
        t = self._objects.get(key)
        return None if t is None else t.get((namespace or "", name))

    def get(self, key: str, namespace: str | None, name: str) -> dict | None:
        obj = self.peek(key, namespace, name)
        return None if obj is None else clone(obj)

    def iter_objects(
        self,
        key: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict]:
        """Matching stored objects (no copies), sorted by namespace then name like etcd's key order."""
        t = self._objects.get(key)
        if not t:
            return []
        sel = Selector(label_selector, field_selector)
        items = [(k, o) for k, o in t.items() if k[0] == namespace] if namespace else list(t.items())
        items.sort(key=lambda kv: kv[0])
        return [o for _, o in items if sel.matches(o)]

    def list(
        self,
        key: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict]:
        return [clone(o) for o in self.iter_objects(key, namespace, label_selector, field_selector)]

    def namespace_exists(self, namespace: str) -> bool:
        return self.peek("namespaces", None, namespace) is not None

    # ------------------------------------------------------------------ writes
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _check_namespace(self, info: ResourceInfo, obj: dict, creating: bool) -> tuple[str, str]:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or ""
        if info.namespaced:
            ns = meta.get("namespace") or ""
            if not ns:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            nso = self.peek("namespaces", None, ns)
            if nso is None:
                raise ApiError(
                    404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
                )
            if creating and (nso.get("status") or {}).get("phase") == "Terminating":
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{info.plural} "{name}" is forbidden: unable to create new content in namespace {ns} '
                    "because it is being terminated",
                )
            return ns, name
        meta.pop("namespace", None)
        return "", name

    def create(self, key: str, obj: dict, dry_run: bool = False) -> dict:
        """Store a new object, filling server-set metadata; 409 AlreadyExists if the name is taken."""
        info = self.resource(key)
        obj = clone(obj)
        obj["apiVersion"] = info.api_version
        obj["kind"] = info.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            gen = meta.get("generateName")
            if not gen:
                raise ApiError(
                    422,
                    "Invalid",
                    f"{info.kind}.{info.group or 'core'} is invalid: metadata.name: "
                    "Required value: name or generateName is required",
                    {
                        "kind": info.kind,
                        "causes": [{"reason": "FieldValueRequired", "field": "metadata.name"}],
                    },
                )
            table = self._table(key)
            for _ in range(20):
                meta["name"] = gen + "".join(random.choice(_GEN_CHARS) for _ in range(5))
                if (meta.get("namespace") or "", meta["name"]) not in table:
                    break
        ns, name = self._check_namespace(info, obj, creating=True)
        if (
            key not in _PATH_SEGMENT_NAMES
            and not info.extra.get("crd")
            and not _DNS1123_SUBDOMAIN.match(name)
        ):
            raise ApiError(
                422,
                "Invalid",
                f'{info.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": {_SUBDOMAIN_RULE}',
                {
                    "name": name,
                    **({"group": info.group} if info.group else {}),
                    "kind": info.kind,
                    "causes": [
                        {
                            "reason": "FieldValueInvalid",
                            "message": f'Invalid value: "{name}": {_SUBDOMAIN_RULE}',
                            "field": "metadata.name",
                        }
                    ],
                },
            )
        table = self._table(key)
        if (ns, name) in table:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{info.plural}{"." + info.group if info.group else ""} "{name}" already exists',
                {"name": name, "group": info.group, "kind": info.plural},
            )
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta.pop("deletionTimestamp", None)
        meta.pop("resourceVersion", None)
        if (key not in ("events", "events.events.k8s.io") and "spec" in obj) or info.extra.get("crd"):
            meta["generation"] = 1
        if key == "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        elif key == "customresourcedefinitions.apiextensions.k8s.io":
            obj["status"] = _crd_status(obj)
        elif key == "nodes":
            _default_node_info(obj)
        if dry_run:
            meta["resourceVersion"] = self.resource_version
            return obj
        meta["resourceVersion"] = self._next_rv()
        table[(ns, name)] = obj
        if key == "customresourcedefinitions.apiextensions.k8s.io":
            self._register_crd(obj)
        self._commit("ADDED", key, obj, None)
        return clone(obj)

    def replace(self, key: str, obj: dict, dry_run: bool = False, _status_only: bool = False) -> dict:
        """Full update. 404 if missing, 409 Conflict on a stale metadata.resourceVersion.

        generation is bumped when anything outside metadata/status changed; an update that changes nothing
        keeps the resourceVersion and sends no watch event (as the real apiserver's no-op detection).
        """
        info = self.resource(key)
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        ns, name = self._check_namespace(info, obj, creating=False)
        table = self._table(key)
        old = table.get((ns, name))
        if old is None:
            raise not_found(info, name)
        ometa = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != ometa.get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {info.plural}{'.' + info.group if info.group else ''} "
                f'"{name}": the object has been modified; please apply your changes to the latest version '
                "and try again",
                {"name": name, "group": info.group, "kind": info.plural},
            )
        obj["apiVersion"] = info.api_version
        obj["kind"] = info.kind
        # Server-owned metadata cannot be changed by clients.
        for f in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if f in ometa:
                meta[f] = ometa[f]
            else:
                meta.pop(f, None)
        meta["resourceVersion"] = ometa.get("resourceVersion")
        if key == "namespaces":
            obj["status"] = old.get("status") or {"phase": "Active"}
        if _spec_of(obj) != _spec_of(old) and "generation" in ometa:
            meta["generation"] = int(ometa.get("generation") or 1) + 1
        if obj == old:
            return clone(old)
        if key == "customresourcedefinitions.apiextensions.k8s.io":
            obj["status"] = _crd_status(obj)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        table[(ns, name)] = obj
        if key == "customresourcedefinitions.apiextensions.k8s.io":
            self._register_crd(obj)
        self._commit("MODIFIED", key, obj, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and key != "namespaces":
            self._remove(key, info, ns, name, "Background")
        return clone(obj)

    def update_status(self, key: str, obj: dict, dry_run: bool = False) -> dict:
        """Status subresource: only `status` changes; everything else is kept from the stored object."""
        info = self.resource(key)
        meta = obj.get("metadata") or {}
        ns = (meta.get("namespace") or "") if info.namespaced else ""
        old = self.peek(key, ns, meta.get("name") or "")
        if old is None:
            raise not_found(info, meta.get("name") or "")
        new = clone(old)
        new["status"] = clone(obj.get("status") or {})
        if meta.get("resourceVersion"):
            new["metadata"]["resourceVersion"] = meta["resourceVersion"]
        return self.replace(key, new, dry_run=dry_run)

    def delete(
        self,
        key: str,
        namespace: str | None,
        name: str,
        propagation_policy: str | None = None,
        preconditions: dict | None = None,
        dry_run: bool = False,
    ) -> dict | None:
        """Delete one object; its ownerReference dependents are garbage collected.

        Returns the object as last stored (with deletionTimestamp when finalizers or namespace termination
        delay the removal); None if it did not exist.
        """
        info = self.resource(key)
        ns = (namespace or "") if info.namespaced else ""
        table = self._table(key)
        old = table.get((ns, name))
        if old is None:
            return None
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {old['metadata'].get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"].get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                "Precondition failed: resourceVersion in precondition does not match the object",
            )
        if dry_run:
            return clone(old)
        if key == "namespaces":
            return self._terminate_namespace(old)
        if old["metadata"].get("finalizers") or (
            propagation_policy == "Foreground" and self._has_dependents(old)
        ):
            if not old["metadata"].get("deletionTimestamp"):
                new = clone(old)
                new["metadata"]["deletionTimestamp"] = now_iso()
                new["metadata"]["resourceVersion"] = self._next_rv()
                table[(ns, name)] = new
                self._commit("MODIFIED", key, new, old)
                old = new
            if propagation_policy == "Foreground":
                self._collect(old["metadata"]["uid"], "Foreground")
                if not old["metadata"].get("finalizers"):
                    return self._remove(key, info, ns, name, "Background")
            return clone(old)
        return self._remove(key, info, ns, name, propagation_policy or "Background")

    def _remove(self, key: str, info: ResourceInfo, ns: str, name: str, policy: str) -> dict | None:
        table = self._table(key)
        old = table.pop((ns, name), None)
        if old is None:
            return None
        gone = clone(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        if key == "customresourcedefinitions.apiextensions.k8s.io":
            self._unregister_crd(name)
            for ri in resources.crd_resources(old):
                self._objects.pop(ri.key, None)
        self._commit("DELETED", key, gone, None)
        uid = old["metadata"].get("uid")
        if uid:
            if policy == "Orphan":
                self._orphan(uid)
            else:
                self._later(self._collect, uid, policy)
        return clone(gone)

    # ------------------------------------------------------------------ garbage collection
    def _later(self, fn: Callable, *args: Any) -> None:
        """Run now-ish: on the next loop iteration when a loop runs, else synchronously (unit use)."""
        loop = self.loop
        if loop is not None and loop.is_running():
            loop.call_soon(fn, *args)
        else:
            fn(*args)

    def _dependents(self, uid: str) -> list[tuple[str, dict]]:
        out = []
        for key, table in self._objects.items():
            for obj in table.values():
                for ref in obj["metadata"].get("ownerReferences") or ():
                    if ref.get("uid") == uid:
                        out.append((key, obj))
                        break
        return out

    def _has_dependents(self, obj: dict) -> bool:
        return bool(self._dependents(obj["metadata"].get("uid", "")))

    def _uid_exists(self, uid: str) -> bool:
        return any(o["metadata"].get("uid") == uid for t in self._objects.values() for o in t.values())

    def _collect(self, uid: str, policy: str = "Background") -> None:
        for key, dep in self._dependents(uid):
            meta = dep["metadata"]
            others = [r for r in meta.get("ownerReferences") or () if r.get("uid") != uid]
            try:
                if others and any(self._uid_exists(r.get("uid", "")) for r in others):
                    new = clone(dep)
                    new["metadata"]["ownerReferences"] = others
                    new["metadata"].pop("resourceVersion", None)
                    self.replace(key, new)
                else:
                    self.delete(key, meta.get("namespace"), meta["name"], propagation_policy=policy)
            except ApiError as exc:  # a dependent vanished meanwhile: nothing left to collect
                log.debug("gc of %s/%s skipped: %s", key, meta.get("name"), exc.message)

    def _orphan(self, uid: str) -> None:
        for key, dep in self._dependents(uid):
            new = clone(dep)
            new["metadata"]["ownerReferences"] = [
                r for r in new["metadata"].get("ownerReferences") or () if r.get("uid") != uid
            ] or None
            if new["metadata"]["ownerReferences"] is None:
                del new["metadata"]["ownerReferences"]
            new["metadata"].pop("resourceVersion", None)
            self.replace(key, new)

    # ------------------------------------------------------------------ namespaces
    def _terminate_namespace(self, ns_obj: dict) -> dict:
        name = ns_obj["metadata"]["name"]
        if (ns_obj.get("status") or {}).get("phase") != "Terminating":
            new = clone(ns_obj)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["status"] = {"phase": "Terminating"}
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._table("namespaces")[("", name)] = new
            self._commit("MODIFIED", "namespaces", new, ns_obj)
            ns_obj = new
            # The namespace controller empties it shortly after; Terminating is visible until then.
            loop = self.loop
            if loop is not None and loop.is_running():
                loop.call_later(0.2, self._finalize_namespace, name)
            else:
                self._finalize_namespace(name)
        return clone(ns_obj)

    def _finalize_namespace(self, name: str) -> None:
        """The namespace controller: delete the contents; the namespace goes once nothing is left.

        Contents with finalizers only get a deletionTimestamp and hold the namespace in Terminating until
        their finalizers are removed (checked again every 0.2 s), as on a real cluster.
        """
        if self.peek("namespaces", None, name) is None:
            return
        held = False
        for key, table in list(self._objects.items()):
            if key == "namespaces":
                continue
            for k in [k for k in table if k[0] == name]:
                try:
                    self.delete(key, name, k[1])
                except ApiError:
                    continue
                held = held or k in table
        if held:
            loop = self.loop
            if loop is not None and loop.is_running():
                loop.call_later(0.2, self._finalize_namespace, name)
            return
        self._remove("namespaces", self.resource("namespaces"), "", name, "Background")

    # ------------------------------------------------------------------ change feed
    def subscribe(self, callback: Callable[[str, str, dict], None]) -> None:
        """callback(event_type, key, obj) after each committed change, on the loop thread; must not block."""
        if self._subscribers is None:
            self._subscribers = []
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable) -> None:
        if self._subscribers and callback in self._subscribers:
            self._subscribers.remove(callback)

    def add_watcher(self, watcher: Watcher) -> None:
        if self._watchers is None:
            self._watchers = []
        self._watchers.append(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        if self._watchers and watcher in self._watchers:
            self._watchers.remove(watcher)

    def history_since(self, key: str, rv: int) -> list[tuple[str, dict, dict | None]] | None:
        """Changes of `key` after resourceVersion rv, or None if rv is older than the kept history."""
        if rv >= self._rv:
            return []
        hist = self._history
        if not hist:
            return None
        if len(hist) == hist.maxlen and hist[0][0] > rv + 1:
            return None  # compacted: the client must re-list (410 Gone)
        return [(t, o, old) for r, k, t, o, old in hist if k == key and r > rv]

    def _commit(self, event_type: str, key: str, obj: dict, old: dict | None) -> None:
        if self._history is None:
            self._history = deque(maxlen=HISTORY_SIZE)
        self._history.append((int(obj["metadata"]["resourceVersion"]), key, event_type, obj, old))
        journal = self.journal
        if journal is not None:  # before anyone hears of the change, so nothing acknowledged is unrecorded
            journal(self, event_type, key, obj)
        if self._watchers:
            for w in list(self._watchers):
                if w.key == key:
                    w.offer(event_type, obj, old)
        if self._subscribers:
            for cb in list(self._subscribers):
                try:
                    cb(event_type, key, clone(obj))
                except Exception:  # a faulty controller must not break the API write that triggered it
                    log.exception("devcluster subscriber failed on %s %s", event_type, key)

    # ------------------------------------------------------------------ state (devcluster.persist)
    def export_state(self) -> dict:
        """This cluster as plain JSON-shaped data: identity, token, objects, the resourceVersion counter and the
        watch history.  The stored objects are shared, not copied: serialise the result (or hand it to
        `from_state`) before the cluster changes again."""
        return {
            "name": self.name,
            "token": self.token,
            "uid": self.uid,
            "openshift": self.openshift,
            "rv": self._rv,
            "objects": {key: list(table.values()) for key, table in self._objects.items() if table},
            "history": [list(entry) for entry in self._history or ()],
        }

    @classmethod
    def from_state(cls, state: dict, loop: asyncio.AbstractEventLoop | None = None) -> VirtualCluster:
        """A cluster rebuilt from `export_state` data: same token, uid, objects, resourceVersions and history, so
        clients holding the old kubeconfig, resourceVersions or a watch position carry on.  Call `resume()` once
        it is served from a running loop."""
        vc = cls(
            state["name"], state["token"], loop=loop, openshift=bool(state.get("openshift")), bootstrap=False
        )
        vc.uid = state.get("uid") or vc.uid
        for key, objs in (state.get("objects") or {}).items():
            vc._objects[key] = {
                ((o["metadata"].get("namespace") or ""), o["metadata"]["name"]): o for o in objs
            }
        for crd in vc._objects.get("customresourcedefinitions.apiextensions.k8s.io", {}).values():
            vc._register_crd(crd)
        history = state.get("history") or ()
        if history:
            vc._history = deque((tuple(entry) for entry in history), maxlen=HISTORY_SIZE)
        vc._rv = max(int(state.get("rv") or 0), vc._max_rv())
        return vc

    def replay(self, event_type: str, key: str, obj: dict) -> None:
        """Apply one journaled change (what `_commit` saw) to a restored cluster, history included."""
        meta = obj["metadata"]
        k = (meta.get("namespace") or "", meta["name"])
        table = self._table(key)
        old = table.get(k)
        rv = int(meta.get("resourceVersion") or 0)
        if event_type == "DELETED":
            table.pop(k, None)
            if key == "customresourcedefinitions.apiextensions.k8s.io":
                self._unregister_crd(meta["name"])
                for ri in resources.crd_resources(obj):
                    self._objects.pop(ri.key, None)
            old = None
        else:
            table[k] = obj
            if key == "customresourcedefinitions.apiextensions.k8s.io":
                self._register_crd(obj)
        if self._history is None:
            self._history = deque(maxlen=HISTORY_SIZE)
        self._history.append((rv, key, event_type, obj, old))
        self._rv = max(self._rv, rv)

    def object_count(self) -> int:
        return sum(len(t) for t in self._objects.values())

    def _max_rv(self) -> int:
        return max(
            (
                int(o["metadata"].get("resourceVersion") or 0)
                for t in self._objects.values()
                for o in t.values()
            ),
            default=0,
        )

    def resume(self) -> None:
        """Go on with the work pending when the state was saved: namespaces that were terminating finish."""
        loop = self.loop
        for ns in list(self._objects.get("namespaces", {}).values()):
            if (ns.get("status") or {}).get("phase") == "Terminating":
                if loop is not None and loop.is_running():
                    loop.call_later(0.2, self._finalize_namespace, ns["metadata"]["name"])
                else:
                    self._finalize_namespace(ns["metadata"]["name"])

    # ------------------------------------------------------------------ events
    def record_event(self, involved: dict, reason: str, message: str, type_: str = "Normal") -> None:
        """Record a core/v1 Event about `involved` (an object dict), aggregating repeats like the recorder."""
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        if not self.namespace_exists(ns):
            return
        kind = involved.get("kind") or ""
        ts = now_iso()
        for ev in self.iter_objects("events", ns):
            io = ev.get("involvedObject") or {}
            if (
                io.get("uid") == meta.get("uid")
                and ev.get("reason") == reason
                and ev.get("message") == message
            ):
                new = clone(ev)
                new["count"] = int(ev.get("count") or 1) + 1
                new["lastTimestamp"] = ts
                new["metadata"].pop("resourceVersion", None)
                self.replace("events", new)
                return
        self.create(
            "events",
            {
                "metadata": {
                    "name": f"{meta.get('name', 'unknown')}.{uuid.uuid4().hex[:16]}",
                    "namespace": ns,
                },
                "involvedObject": {
                    "kind": kind,
                    "apiVersion": involved.get("apiVersion", "v1"),
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "count": 1,
                "firstTimestamp": ts,
                "lastTimestamp": ts,
                "eventTime": None,
                "reportingComponent": "devcluster",
                "source": {"component": "devcluster"},
            },
        )


_NODE_INFO_DEFAULTS = {
    "architecture": "amd64",
    "bootID": "",
    "containerRuntimeVersion": "containerd://1.7.0",
    "kernelVersion": "6.1.0",
    "kubeProxyVersion": "v1.34.0",
    "kubeletVersion": "v1.34.0",
    "machineID": "",
    "operatingSystem": "linux",
    "osImage": "Ubuntu 22.04.4 LTS",
    "systemUUID": "",
}


def _default_node_info(node: dict) -> None:
    """Fill the nodeInfo fields a kubelet always reports (typed clients reject a Node without them)."""
    status = node.setdefault("status", {})
    info = status.setdefault("nodeInfo", {})
    name = node["metadata"].get("name", "")
    for k, v in _NODE_INFO_DEFAULTS.items():
        if not info.get(k):
            info[k] = v or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{k}.{name}"))


def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _crd_status(crd: dict) -> dict:
    ts = now_iso()
    names = (crd.get("spec") or {}).get("names") or {}
    return {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": ts,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": ts,
            },
        ],
        "storedVersions": [
            v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")
        ],
    }


def encode_continue(ns: str, name: str) -> str:
    return base64.urlsafe_b64encode(f"{ns}/{name}".encode()).decode()


def decode_continue(token: str) -> tuple[str, str]:
    try:
        ns, _, name = base64.urlsafe_b64decode(token.encode()).decode().partition("/")
    except Exception as exc:
        raise ApiError(400, "BadRequest", "invalid continue token") from exc
    return ns, name
