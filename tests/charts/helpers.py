"""Render, lint and validate the project's Helm charts in tests.

The charts are rendered by the Helm v4 engine (``helm_python``) exactly as the cluster gateway
renders them, then split into Kubernetes objects and checked against the upstream OpenAPI schemas
shipped by ``kubernetes-validate`` (strict mode: unknown fields are errors). Charts are loaded once
per process because loading parses every template.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHARTS_DIR = Path(__file__).resolve().parents[2] / "charts"

# kubernetes-validate ships schemas for many releases; test against the newest one it knows
# (1.30 or later is what the charts promise).
KUBE_VERSION = kubernetes_validate.latest_version()

# Kinds that are not part of Kubernetes itself, so no upstream schema exists for them.
FOREIGN_API_GROUPS = ("route.openshift.io/", "nfd.k8s-sigs.io/")


@functools.cache
def load_chart(chart: str) -> helm.Chart:
    """Load ``charts/<chart>`` once; Chart objects are immutable and thread-safe."""
    return helm.Chart.load(CHARTS_DIR / chart)


def render(
    chart: str,
    values: dict[str, Any] | None = None,
    *,
    release: str = "demo",
    namespace: str = "bud-test",
) -> dict[str, str]:
    """Render a chart offline; returns template path -> rendered text (NOTES.txt included)."""
    return load_chart(chart).render(values, name=release, namespace=namespace, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Split rendered templates into Kubernetes objects, skipping NOTES and empty documents."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def render_objects(chart: str, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Render and split in one step."""
    return objects(render(chart, values, **kwargs))


def find(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (and ``name`` when given)."""
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind``; fails loudly when there are none or several."""
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(workload: dict[str, Any], *, init: bool = False) -> list[dict[str, Any]]:
    """Containers of a Deployment / DaemonSet / Job pod template."""
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers" if init else "containers", []))


def lint(chart: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Lint with the Helm engine (strict: warnings count) and return warnings and errors."""
    report = helm.lint(CHARTS_DIR / chart, values, strict=True, kube_version="v1.30.0")
    return [m for m in report["messages"] if m["severity"] >= 2]


def validate(obj: dict[str, Any]) -> None:
    """Validate one object against the Kubernetes schema; raises ValidationError when invalid."""
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def k8s_native(objs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Objects whose API group is part of Kubernetes (the ones an upstream schema exists for)."""
    for obj in objs:
        if not obj["apiVersion"].startswith(FOREIGN_API_GROUPS):
            yield obj


def walk_strings(node: Any) -> Iterator[str]:
    """Every string (keys and values) inside a nested structure."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)
    elif isinstance(node, str):
        yield node
