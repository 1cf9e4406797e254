"""Reading admin pages in tests: the tree of Django's ``parse_html``, searched by tag, id, class and attributes."""

from __future__ import annotations

from collections.abc import Iterator

from django.test.html import Element


def walk(element) -> Iterator[Element]:
    """Every element below ``element``, depth first."""
    for child in getattr(element, "children", ()):
        if isinstance(child, Element):
            yield child
            yield from walk(child)


def attr(element: Element, name: str) -> str | None:
    return dict(element.attributes).get(name)


def has(element: Element, name: str, value: str) -> bool:
    """``element``'s attribute is ``value``; for ``class``, it has each of those classes (parse_html sorts them)."""
    if name == "class":
        return set(value.split()) <= set((attr(element, "class") or "").split())
    return attr(element, name) == value


def find(
    root, *, id: str | None = None, cls: str | None = None, tag: str | None = None, **attrs: str
) -> list[Element]:
    """``root`` and the elements below it matching all of: ``id``, class ``cls``, ``tag`` and attributes
    (``data_run="7"`` matches ``data-run="7"``)."""
    everything = [root, *walk(root)] if isinstance(root, Element) else list(walk(root))
    wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
    if id is not None:
        wanted["id"] = id
    if cls is not None:
        wanted["class"] = cls
    return [
        e
        for e in everything
        if (tag is None or e.name == tag) and all(has(e, k, v) for k, v in wanted.items())
    ]


def one(root, **kw) -> Element:
    found = find(root, **kw)
    assert len(found) == 1, f"{kw}: {len(found)} elements"
    return found[0]


def text(element) -> str:
    """The text of ``element`` with whitespace collapsed."""
    if isinstance(element, str):
        return element
    return " ".join(" ".join(text(c) for c in element.children).split())
