"""Helpers for tests that drive a simulated cluster: polling with a deadline and small object builders."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any


def wait_for(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll fn() until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def gpu_pod(name: str, gpus: int, resource: str = "nvidia.com/gpu", **spec: Any) -> dict:
    """A Pod manifest asking for `gpus` devices of `resource` (extra keys go to its spec)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "busybox:1.36", "resources": {"limits": {resource: str(gpus)}}}
            ],
            **spec,
        },
    }


def pod_condition(pod: Any, ctype: str) -> Any:
    """A condition of an official-client V1Pod by type, or None."""
    return next((c for c in pod.status.conditions or [] if c.type == ctype), None)


def https_context(ca_pem: bytes) -> ssl.SSLContext:
    """An SSL context trusting the devcluster CA (for plain HTTP clients talking to the API)."""
    return ssl.create_default_context(cadata=ca_pem.decode())
