"""Small helpers over Kubernetes objects kept as plain dicts (the store's representation).

Quantities are parsed with ``core.quantity.parse_quantity``, the strict and exact parser the inventory uses (the
official client's ``parse_quantity`` rounds large values and accepts forms the API refuses; see that module), so
the emulator and the inventory read every node the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from core.quantity import parse_quantity

# The alphabet Kubernetes uses for generated name suffixes and hashes (no vowels, no look-alike digits).
SAFE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: Any) -> Decimal:
    """A resource quantity as an exact Decimal; unparsable values count as zero (as a lenient kubelet)."""
    if value is None or value == "":
        return Decimal(0)
    try:
        return parse_quantity(value)
    except (ValueError, TypeError):
        return Decimal(0)


def format_quantity(resource: str, value: Decimal) -> str:
    """Render a quantity the way kubelet reports it: cpu in cores or millicores, bytes in Ki."""
    if resource == "cpu":
        if value == value.to_integral_value():
            return str(int(value))
        return f"{int(value * 1000)}m"
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        if value == 0:
            return "0"
        return f"{int(value // 1024)}Ki"
    return str(int(value))


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(SAFE_CHARS) for _ in range(n))


def template_hash(template: Any) -> str:
    """A short stable hash of a pod template, rendered in the safe alphabet (like pod-template-hash)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).digest()
    num = int.from_bytes(digest[:8], "big")
    out = []
    for _ in range(10):
        num, rem = divmod(num, len(SAFE_CHARS))
        out.append(SAFE_CHARS[rem])
    return "".join(out)


def owner_reference(owner: dict, controller: bool = True) -> dict:
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", "v1"),
        "kind": owner.get("kind", ""),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: dict) -> dict | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def is_owned_by(obj: dict, owner: dict) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == owner["metadata"].get("uid")


def match_label_selector(selector: dict | None, labels: dict | None) -> bool:
    """metav1.LabelSelector (matchLabels + matchExpressions) against a label map; empty selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        return False
    for k, v in match_labels.items():
        if labels.get(k) != v:
            return False
    for e in exprs:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return c
    return None


def set_condition(
    status: dict, ctype: str, value: str, reason: str = "", message: str = "", probe_times: bool = False
) -> None:
    """Upsert a condition, keeping lastTransitionTime unless the status flips (as controllers do)."""
    conds = status.setdefault("conditions", [])
    ts = now_iso()
    for c in conds:
        if c.get("type") == ctype:
            changed = (c.get("status"), c.get("reason") or "", c.get("message") or "") != (
                value,
                reason,
                message,
            )
            if c.get("status") != value:
                c["lastTransitionTime"] = ts
            c["status"] = value
            if reason:
                c["reason"] = reason
            else:
                c.pop("reason", None)
            if message:
                c["message"] = message
            else:
                c.pop("message", None)
            if probe_times and (changed or "lastUpdateTime" not in c):
                c["lastUpdateTime"] = ts
            return
    cond = {"type": ctype, "status": value, "lastTransitionTime": ts}
    if probe_times:
        cond["lastUpdateTime"] = ts
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    conds.append(cond)


def pod_is_ready(pod: dict) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def pod_is_terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_is_active(pod: dict) -> bool:
    return not pod_is_terminal(pod) and not pod["metadata"].get("deletionTimestamp")


def container_env(container: dict) -> dict[str, str]:
    """Plain-valued env vars of a container (valueFrom entries are not resolved)."""
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or () if "name" in e}


def pod_env(pod: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        env.update(container_env(c))
    return env
