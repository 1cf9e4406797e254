"""Request parsing with limits: JSON nested at most ``MAX_JSON_DEPTH`` levels and without NUL characters, for
every view.

Python's JSON decoder recurses once per level, so a body of a few thousand ``[`` raises ``RecursionError`` (a 500
in DRF, which only turns ``ValueError`` into a 400). :class:`JSONParser` answers 400 instead, and refuses documents
nested deeper than any request of this API needs (bodies are a few levels deep) before serializers, which recurse
too, walk them. Strings holding NUL (``\\u0000``) are refused as well: PostgreSQL stores NUL neither in text nor
in jsonb, so such a value would fail (500) wherever it reached the database.

:class:`ContentNegotiation` hands every JSON body to that parser, also in views that list DRF's own
``JSONParser`` in ``parser_classes``. The body's size is bounded before any parser runs
(``core.api.middleware.RequestBodyLimitMiddleware``).
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation

MAX_JSON_DEPTH = 64


def json_problem(data: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What is wrong with ``data`` (parsed JSON), or None: containers nested more than ``max_depth`` levels, or a
    key or string holding NUL. Iterative, so a deep document cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "JSON parse error - strings may not contain NUL (\\u0000) characters"
            continue
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return f"JSON parse error - the document nests deeper than {max_depth} levels"
        # Keys and scalars are leaves: they do not count as a level.
        stack.extend((child, depth + 1) for child in children)
    return None


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser (no NaN/Infinity), with a nesting limit, a 400 for what the decoder cannot nest,
    and no NUL in strings."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(
                f"JSON parse error - the document nests deeper than {MAX_JSON_DEPTH} levels"
            ) from None
        problem = json_problem(data)
        if problem:
            raise ParseError(problem)
        return data


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, with :class:`JSONParser` standing in for DRF's own wherever a view lists that one."""

    def select_parser(self, request, parsers_: list) -> Any:
        parser = super().select_parser(request, parsers_)
        if type(parser) is parsers.JSONParser:
            return JSONParser()
        return parser
