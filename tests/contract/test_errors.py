"""Every error answer has one shape, ``{"detail": ..., "code": ...}``, whoever produces it: DRF's own exceptions
(validation, 401, 403, 404, 405, 406, 415, 429, parse errors), Django's error views (a URL nothing serves, a request
Django itself refuses), the body-size middleware, the health endpoints, an unexpected exception."""

from __future__ import annotations

import pytest

from clusters.models import Cluster
from core.models import Run

pytestmark = pytest.mark.django_db


def error(response, status: int, code: str) -> dict:
    """The answer's body, after checking it is the one error shape with this status and code."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert body.get("code") == code, body
    return body


def test_validation_errors_name_each_field_by_its_path(api):
    response = api.post(
        "/clusters/provision",
        {"name": "9bad", "provider": "aws", "region": "us-east-1", "credential_id": 1,
         "node_pools": [{"name": "system", "instance_type": "m6i.large"}, {"name": "Bad Name", "instance_type": ""}]},
        format="json",
    )  # fmt: skip
    body = error(response, 400, "invalid")
    assert set(body["errors"]) == {"name", "node_pools.1.name", "node_pools.1.instance_type"}
    assert all(isinstance(m, list) and m and isinstance(m[0], str) for m in body["errors"].values())
    assert body["detail"].startswith("Invalid input: ") and "(and 2 more)" in body["detail"]


def test_a_body_that_is_not_json_is_a_parse_error(api):
    response = api.post("/deployments/plan", data="{not json", content_type="application/json")
    error(response, 400, "parse_error")


def test_authentication_and_permission_refusals(client, api_noperm):
    error(client.get("/clusters"), 401, "not_authenticated")
    error(client.get("/clusters", HTTP_AUTHORIZATION="Token " + "0" * 64), 401, "authentication_failed")
    error(api_noperm.get("/clusters"), 403, "permission_denied")


def test_not_found_of_an_object_and_of_a_path(api):
    error(api.get("/clusters/999999"), 404, "not_found")
    body = error(api.get("/no/such/endpoint"), 404, "not_found")
    assert "/no/such/endpoint" in body["detail"]


def test_method_media_type_and_accept_refusals(api, client):
    error(api.put("/runs", {}, format="json"), 405, "method_not_allowed")
    error(
        api.post("/deployments/plan", data="cluster=1", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )
    error(api.get("/clusters", HTTP_ACCEPT="application/xml"), 406, "not_acceptable")
    response = client.post("/health")
    error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"


def test_throttled_answers_say_when_to_retry(api, settings):
    settings.API_THROTTLE_USER_RATE = "1/min"
    assert api.get("/runs").status_code == 200
    response = api.get("/runs")
    body = error(response, 429, "throttled")
    assert body["retry_after"] == int(response["Retry-After"]) > 0


def test_requests_django_or_the_middleware_refuse_before_any_view(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    body = error(api.post("/deployments/plan", {"model": "x" * 2000}, format="json"), 413, "body_too_large")
    assert body["limit"] == 1000
    settings.API_MAX_BODY_BYTES = 2 * 1024 * 1024
    # Over DATA_UPLOAD_MAX_NUMBER_FIELDS (1000) form fields: Django refuses to read the body.
    fields = {f"f{i}": "x" for i in range(1200)}
    error(api.post("/clusters/register", fields, format="multipart"), 400, "too_many_fields")
    assert not Cluster.objects.exists() and not Run.objects.exists()
    # A Host the service does not answer to (DJANGO_ALLOWED_HOSTS): Django's own 400.
    error(api.get("/clusters", HTTP_HOST="evil.example.com"), 400, "bad_request")


def test_an_unexpected_error_is_a_plain_500_without_internals(api, monkeypatch):
    from deployments import services

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /srv/secret/path")

    monkeypatch.setattr(services, "plan", broken)
    Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443")
    response = api.post(
        "/deployments/plan", {"cluster": "c1", "model": "llama-3.1-8b-instruct"}, format="json"
    )
    body = error(response, 500, "server_error")
    assert "secret" not in response.content.decode()
    assert body == {"detail": "Internal server error.", "code": "server_error"}
