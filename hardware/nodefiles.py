"""Node objects from files or pasted text: ``kubectl get nodes -o yaml`` / ``-o json`` output, one Node, a list,
a ``kind: List`` / ``NodeList``, or a multi-document YAML stream. What ``manage.py inspect_nodes``, the parser's
tests and its benchmark read; the parser itself (``hardware.inventory``) never touches files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_node_objects"]


def load_node_objects(text_or_path: str | Path) -> list[dict[str, Any]]:
    """Read Node objects from YAML or JSON text, or from a file path.

    Accepts one Node, a list of Nodes, a ``kind: List`` / ``NodeList`` (``items``), and YAML
    streams with several documents. Raises ValueError for text that is neither YAML nor JSON or
    for objects that are not Nodes (naming the offending item).
    """
    if isinstance(text_or_path, Path):
        text = text_or_path.read_text(encoding="utf-8")
    elif "\n" not in text_or_path and len(text_or_path) < 4096 and Path(text_or_path).is_file():
        text = Path(text_or_path).read_text(encoding="utf-8")
    else:
        text = text_or_path
    documents: list[Any]
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            documents = [json.loads(text)]
        except json.JSONDecodeError:
            documents = _load_yaml(text)
    else:
        documents = _load_yaml(text)
    if len(documents) == 1 and isinstance(documents[0], str) and "\n" not in text.strip():
        # Most likely a mistyped path: say so instead of "a str is not a Node".
        raise ValueError(f"no such file, and not Node YAML/JSON either: {text.strip()[:200]!r}")
    nodes: list[dict[str, Any]] = []
    for document in documents:
        _collect_nodes(document, nodes, "document")
    return nodes


def _load_yaml(text: str) -> list[Any]:
    try:
        # safe_load_all never builds arbitrary Python objects from tags.
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML or JSON: {exc}") from exc


def _collect_nodes(obj: Any, out: list[dict[str, Any]], where: str) -> None:
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            _collect_nodes(item, out, f"{where} item {index}")
        return
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a {type(obj).__name__}, not a Node object")
    kind = obj.get("kind")
    if "items" in obj and (kind is None or str(kind).endswith("List")):
        items = obj.get("items") or []
        if not isinstance(items, list):
            raise ValueError(f"{where}: 'items' is not a list")
        for index, item in enumerate(items):
            _collect_nodes(item, out, f"{where} item {index}")
        return
    if kind not in (None, "Node"):
        raise ValueError(f"{where} is a {kind}, not a Node")
    out.append(obj)
