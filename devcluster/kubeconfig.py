"""Kubeconfig documents for virtual clusters: one cluster, one token user, one context each.

Files are written 0600 (they carry a bearer token).  The server URL carries the cluster's path prefix
(`https://127.0.0.1:6443/clusters/<name>`); kubectl, client-go and the Python client all accept a path in
`server:`.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml


def build(name: str, server: str, ca_pem: bytes, token: str) -> dict:
    ctx = f"devcluster-{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": ctx,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": f"{ctx}-admin", "user": {"token": token}}],
        "contexts": [
            {"name": ctx, "context": {"cluster": ctx, "user": f"{ctx}-admin", "namespace": "default"}}
        ],
        "current-context": ctx,
    }


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (created 0600 before any byte lands)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def dump(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)
