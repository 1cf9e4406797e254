"""Decoding of Kubernetes protobuf request bodies for the few kinds kubectl sends that way.

kubectl's generator commands (`kubectl create namespace|configmap|secret|serviceaccount|deployment`,
`kubectl run`) go through typed clients that send `application/vnd.kubernetes.protobuf` bodies, and do not
retry with JSON on 415 (they do accept JSON answers).  So the server decodes these bodies: a tiny
wire-format reader plus the field numbers of the kinds involved, taken from the Kubernetes
`generated.proto` files.  Hand-written because the full generated protobuf descriptors of the Kubernetes
API are not available as a Python package.  Other kinds still get 415.
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

# Schema: field number -> (json name, type, repeated).  Types: "s" string, "b" bytes (base64 in JSON),
# "i" int, "bool", "map" (string->string), "mapb" (string->bytes), or a nested schema dict.
_OWNER_REF = {
    1: ("kind", "s", False),
    3: ("name", "s", False),
    4: ("uid", "s", False),
    5: ("apiVersion", "s", False),
    6: ("controller", "bool", False),
    7: ("blockOwnerDeletion", "bool", False),
}
_OBJECT_META = {
    1: ("name", "s", False),
    2: ("generateName", "s", False),
    3: ("namespace", "s", False),
    6: ("resourceVersion", "s", False),
    11: ("labels", "map", False),
    12: ("annotations", "map", False),
    13: ("ownerReferences", _OWNER_REF, True),
    14: ("finalizers", "s", True),
}
_LOCAL_REF = {1: ("name", "s", False)}
_OBJ_REF = {1: ("kind", "s", False), 2: ("namespace", "s", False), 3: ("name", "s", False)}

_LABEL_SELECTOR = {
    1: ("matchLabels", "map", False),
    2: (
        "matchExpressions",
        {1: ("key", "s", False), 2: ("operator", "s", False), 3: ("values", "s", True)},
        True,
    ),
}
_CONTAINER_PORT = {
    1: ("name", "s", False),
    2: ("hostPort", "i", False),
    3: ("containerPort", "i", False),
    4: ("protocol", "s", False),
}
_ENV_VAR = {1: ("name", "s", False), 2: ("value", "s", False)}
_RESOURCES = {1: ("limits", "mapq", False), 2: ("requests", "mapq", False)}
_CONTAINER = {
    1: ("name", "s", False),
    2: ("image", "s", False),
    3: ("command", "s", True),
    4: ("args", "s", True),
    5: ("workingDir", "s", False),
    6: ("ports", _CONTAINER_PORT, True),
    7: ("env", _ENV_VAR, True),
    8: ("resources", _RESOURCES, False),
    13: ("terminationMessagePath", "s", False),
    14: ("imagePullPolicy", "s", False),
    16: ("stdin", "bool", False),
    17: ("stdinOnce", "bool", False),
    18: ("tty", "bool", False),
    20: ("terminationMessagePolicy", "s", False),
}
_POD_SPEC = {
    2: ("containers", _CONTAINER, True),
    3: ("restartPolicy", "s", False),
    4: ("terminationGracePeriodSeconds", "i", False),
    5: ("activeDeadlineSeconds", "i", False),
    6: ("dnsPolicy", "s", False),
    7: ("nodeSelector", "map", False),
    8: ("serviceAccountName", "s", False),
    10: ("nodeName", "s", False),
    15: ("imagePullSecrets", _LOCAL_REF, True),
    19: ("schedulerName", "s", False),
}
_POD_TEMPLATE = {1: ("metadata", _OBJECT_META, False), 2: ("spec", _POD_SPEC, False)}

SCHEMAS: dict[tuple[str, str], dict] = {
    ("v1", "Pod"): {1: ("metadata", _OBJECT_META, False), 2: ("spec", _POD_SPEC, False)},
    ("apps/v1", "Deployment"): {
        1: ("metadata", _OBJECT_META, False),
        2: (
            "spec",
            {
                1: ("replicas", "i", False),
                2: ("selector", _LABEL_SELECTOR, False),
                3: ("template", _POD_TEMPLATE, False),
                5: ("minReadySeconds", "i", False),
                6: ("revisionHistoryLimit", "i", False),
                9: ("progressDeadlineSeconds", "i", False),
            },
            False,
        ),
    },
    ("v1", "Namespace"): {
        1: ("metadata", _OBJECT_META, False),
        2: ("spec", {1: ("finalizers", "s", True)}, False),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", _OBJECT_META, False),
        2: ("data", "map", False),
        3: ("binaryData", "mapb", False),
        4: ("immutable", "bool", False),
    },
    ("v1", "Secret"): {
        1: ("metadata", _OBJECT_META, False),
        2: ("data", "mapb", False),
        3: ("type", "s", False),
        4: ("stringData", "map", False),
        5: ("immutable", "bool", False),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", _OBJECT_META, False),
        2: ("secrets", _OBJ_REF, True),
        3: ("imagePullSecrets", _LOCAL_REF, True),
        4: ("automountServiceAccountToken", "bool", False),
    },
}
_UNKNOWN = {
    1: ("typeMeta", {1: ("apiVersion", "s", False), 2: ("kind", "s", False)}, False),
    2: ("raw", "raw", False),
}


# Optional (pointer) fields in the Go types: their zero value is meaningful and kept; other zero values are
# dropped, as JSON's omitempty would.
_POINTER_FIELDS = frozenset(
    {
        "replicas",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
        "immutable",
        "automountServiceAccountToken",
    }
)


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val = buf[i : i + n]
            if len(val) != n:
                raise ProtobufError("truncated field")
            i += n
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield num, val


def _decode(buf: bytes, schema: dict) -> dict:
    out: dict[str, Any] = {}
    for num, val in _fields(buf):
        spec = schema.get(num)
        if spec is None:
            continue  # fields the emulator does not need (timestamps, status, ...)
        name, typ, repeated = spec
        if typ in ("map", "mapb", "mapq"):
            entry = dict(_fields(val))
            key = entry.get(1, b"").decode()
            raw = entry.get(2, b"")
            if typ == "mapq":  # resource.Quantity is a message holding its string form
                raw = dict(_fields(raw)).get(1, b"")
            out.setdefault(name, {})[key] = base64.b64encode(raw).decode() if typ == "mapb" else raw.decode()
            continue
        if isinstance(typ, dict):
            v: Any = _decode(val, typ)
        elif typ == "s":
            v = val.decode()
        elif typ == "raw":
            v = val
        elif typ == "b":
            v = base64.b64encode(val).decode()
        elif typ == "bool":
            v = bool(val)
        else:
            v = int(val)
        if repeated:
            out.setdefault(name, []).append(v)
        elif (v not in ("", {}, 0) and v is not False) or name in _POINTER_FIELDS:
            out[name] = v
    return out


def decode(body: bytes) -> dict:
    """A Kubernetes protobuf envelope -> the JSON-shaped object; ProtobufError if the kind is not known."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing protobuf magic")
    env = _decode(body[len(MAGIC) :], _UNKNOWN)
    tm = env.get("typeMeta") or {}
    key = (tm.get("apiVersion", ""), tm.get("kind", ""))
    schema = SCHEMAS.get(key)
    if schema is None:
        raise ProtobufError(f"protobuf bodies of {key[0]}/{key[1]} are not supported; send JSON")
    obj = _decode(env.get("raw") or b"", schema)
    obj["apiVersion"], obj["kind"] = key
    return obj
