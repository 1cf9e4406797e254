"""What the emulator refuses before it stores anything, with the real server's codes and messages.

A body that does not match its URL (kind, namespace, name), a patch that renames its object, a field
selector on a field the resource cannot be selected on, and the workload mistakes the real validation
catches first.  Only these: the emulator does not re-implement every type's validation (see README.md,
"What it does not do").
"""

from __future__ import annotations

from typing import Any

from devcluster import resources
from devcluster.resources import ResourceInfo
from devcluster.store import ApiError, parse_field_selector
from devcluster.wire import dumps

WORKLOADS = frozenset(
    {"deployments.apps", "replicasets.apps", "statefulsets.apps", "daemonsets.apps", "replicationcontrollers"}
)


def check_body(body: Any, info: ResourceInfo, namespace: str | None, name: str | None) -> dict:
    """The body as an object whose kind, namespace and name agree with the URL (filled in from it when unset)."""
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body must be an object")
    kind = body.get("kind")
    if kind and kind != info.kind:
        raise ApiError(
            400,
            "BadRequest",
            f"the kind of the object ({kind}) does not match the resource ({info.kind})",
        )
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ApiError(400, "BadRequest", "metadata must be an object")
    if info.namespaced:
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if namespace:
            meta["namespace"] = namespace
    if name is not None:
        if meta.get("name") and meta["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        meta["name"] = name
    return body


def check_immutable(info: ResourceInfo, old: dict, new: dict) -> None:
    """A patch or apply may not move its object to another name or namespace."""
    meta = new.setdefault("metadata", {})
    if meta.get("name") != old["metadata"]["name"] or (
        info.namespaced and meta.get("namespace") != old["metadata"].get("namespace")
    ):
        raise ApiError(400, "BadRequest", "metadata.name and metadata.namespace cannot be changed by a patch")


def check_field_selector(info: ResourceInfo, selector: str | None) -> None:
    """400 for a field the resource cannot be selected on, with the real server's message."""
    allowed = resources.field_selectors(info)
    if not selector or allowed is None:
        return
    for path, _, _ in parse_field_selector(selector):
        field = ".".join(path)
        if field not in allowed:
            only = ", ".join(f'"{f}"' for f in allowed)
            raise ApiError(400, "BadRequest", f'"{field}" is not a known field selector: only {only}')


def _selector_matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def validate(info: ResourceInfo, obj: dict) -> None:
    """422 Invalid for the workload mistakes the real validation catches first: a negative replica count, a
    missing or non-matching selector, a pod template without containers or a container without an image.
    (Only these: the emulator does not re-implement every type's validation.)"""
    if info.key not in WORKLOADS:
        return
    spec = obj.get("spec") or {}
    causes: list[tuple[str, str, str]] = []  # (field, reason, message)
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        causes.append(
            (
                "spec.replicas",
                "FieldValueInvalid",
                f"Invalid value: {replicas}: must be greater than or equal to 0",
            )
        )
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = spec.get("selector")
    if info.key == "replicationcontrollers":
        selector = {"matchLabels": selector or labels}
    if not selector:
        causes.append(("spec.selector", "FieldValueRequired", "Required value"))
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(("spec.selector", "FieldValueInvalid", "Invalid value: {}: empty selector is invalid"))
    if not selector or not _selector_matches(selector, labels):
        causes.append(
            (
                "spec.template.metadata.labels",
                "FieldValueInvalid",
                f"Invalid value: {dumps(labels)}: `selector` does not match template `labels`",
            )
        )
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    for i, c in enumerate(containers):
        if not (c or {}).get("image"):
            causes.append(
                (f"spec.template.spec.containers[{i}].image", "FieldValueRequired", "Required value")
            )
    if not causes:
        return
    listed = [f"{f}: {m}" for f, _, m in causes]
    name = obj["metadata"].get("name", "")
    raise ApiError(
        422,
        "Invalid",
        f'{info.kind}{"." + info.group if info.group else ""} "{name}" is invalid: '
        + (listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"),
        {
            "name": name,
            **({"group": info.group} if info.group else {}),
            "kind": info.kind,
            "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
        },
    )
