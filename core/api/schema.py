"""The OpenAPI schema's view of the API's conventions, so that it describes every answer the API gives.

:class:`AutoSchema` (``DEFAULT_SCHEMA_CLASS``) adds to drf-spectacular's introspection:

* **errors**: every operation documents its error answers with the one ``Error`` component
  (``core.api.errors``): 400, 401, 403, 429, 500 and 503 everywhere, 404 where the path names an object, 413 and 415
  where there is a request body, plus the statuses a view declares with ``core.api.responses.refusal``. Each
  response narrows ``code`` to the codes it can carry: the generic ones of its status (``GENERIC_CODES``) and the
  refusal's own;
* **query serializers**: the fields of the view's ``query_serializers`` entry for the operation become its query
  parameters (``core.api.query``), the same declaration the request is validated with;
* **strict bodies**: request bodies read by ``core.api.serializers.StrictFields`` serializers are documented with
  ``additionalProperties: false``, as unknown keys are refused.
"""

from __future__ import annotations

from typing import Any

import uritemplate
from drf_spectacular import openapi

from .query import query_serializer
from .serializers import StrictFields

# The codes an answer of each status may carry whatever the operation (its refusals add their own).
GENERIC_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid", "unknown_field", "unknown_parameter", "parse_error", "bad_request", "too_many_fields",
          "bad_content_length"),
    401: ("not_authenticated", "authentication_failed"),
    403: ("permission_denied",),
    404: ("not_found",),
    409: (),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    422: (),
    429: ("throttled",),
    500: ("server_error",),
    503: ("database_unavailable", "broker_unavailable"),
}  # fmt: skip

GENERIC_DESCRIPTIONS = {
    400: "Invalid request: a field or query parameter is invalid or unknown (errors names each), or the body is "
    "not valid JSON",
    401: "No valid token (Authorization: Token <key>)",
    403: "The user lacks the permission this operation needs",
    404: "No such object",
    413: "The request body is larger than API_MAX_BODY_BYTES",
    415: "Unsupported Content-Type",
    429: "Too many requests; retry after Retry-After seconds",
    500: "Unexpected server error (logged)",
    503: "The database or the task broker is unavailable; retry after Retry-After seconds",
}

# Marks a response declared with core.api.responses.refusal: the refusal's codes, merged at generation time.
REFUSAL_CODES_KEY = "x-refusal-codes"


class AutoSchema(openapi.AutoSchema):
    def get_override_parameters(self) -> list:
        parameters = list(super().get_override_parameters())
        query = query_serializer(self.view, self.method)
        if query is not None:
            parameters.append(query)
        return parameters

    def _map_serializer(self, serializer, direction, bypass_extensions=False) -> dict:
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, StrictFields) and "properties" in schema:
            schema["additionalProperties"] = False
        return schema

    def _get_response_bodies(self, direction="response") -> dict:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        statuses = {400, 401, 403, 429, 500, 503}
        if uritemplate.variables(self.path):
            statuses.add(404)
        if self.method in ("POST", "PUT", "PATCH") and self._get_request_body():
            statuses |= {413, 415}
        for status in sorted(statuses):
            responses.setdefault(str(status), {"description": GENERIC_DESCRIPTIONS[status]})
        for code, response in responses.items():
            if code.isdigit() and int(code) >= 400:
                responses[code] = self._error_response(int(code), response)
        return dict(sorted(responses.items()))

    def _error_response(self, status: int, response: dict) -> dict:
        """The answer of an error status: the ``Error`` component, ``code`` narrowed to what this answer may
        carry, and whatever extra fields the view documents for it (a refusal's data, a health report)."""
        content = response.get("content") or {}
        declared = dict(next(iter(content.values()), {}).get("schema") or {})
        refusal_codes = declared.pop(REFUSAL_CODES_KEY, ())
        codes = sorted({*GENERIC_CODES.get(status, ()), *refusal_codes})
        parts: list[dict[str, Any]] = [self.resolve_serializer(_error_serializer(), "response").ref]
        if codes:
            parts.append({"type": "object", "properties": {"code": {"type": "string", "enum": codes}}})
        if declared and declared != {"type": "object"}:
            parts.append(declared)
        return {
            **{k: v for k, v in response.items() if k != "content"},
            "description": response.get("description") or GENERIC_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": {"allOf": parts}}},
        }


def _error_serializer():
    from .responses import ErrorSerializer

    return ErrorSerializer
