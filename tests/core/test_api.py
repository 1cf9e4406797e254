"""HTTP surface of the foundation: health, auth, errors, runs API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from core import workflow
from core.choices import RunStatus
from core.models import Run

pytestmark = pytest.mark.django_db


def test_health_answers_without_auth(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health_db(client):
    response = client.get("/health/db")
    assert response.status_code == 200
    assert response.json()["check"] == "database"


def test_health_broker_round_trip(client):
    response = client.get("/health/broker")
    assert response.status_code == 200, response.json()


def test_health_broker_down_is_503_with_reason(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    response = client.get("/health/broker")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "broker round trip failed" in body["reason"]


def test_unauthenticated_is_401():
    response = APIClient().get("/runs")
    assert response.status_code == 401
    assert "credentials" in response.json()["detail"].lower()


def test_bad_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/runs").status_code == 401


def test_unknown_route_is_json_404(api):
    response = api.get("/no/such/thing")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert "Not found" in response.json()["detail"]


def test_malformed_json_is_400(api):
    run = workflow.get_workflow("demo.chain").launch(params={})
    response = api.post(f"/runs/{run.pk}/cancel", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_user_without_permission_gets_403(api_noperm):
    assert api_noperm.get("/runs").status_code == 403


def test_view_permission_allows_reading_but_not_cancel(django_user_model):
    user = django_user_model.objects.create_user("reader", password="a-long-test-password")
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    client = APIClient()
    client.force_authenticate(user)
    run = workflow.get_workflow("demo.chain").launch(params={})
    assert client.get("/runs").status_code == 200
    assert client.post(f"/runs/{run.pk}/cancel", {}, format="json").status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING and not run.cancel_requested


def test_runs_list_and_detail(api):
    run = workflow.get_workflow("demo.chain").launch(params={"x": 1})
    listing = api.get("/runs").json()
    assert listing["count"] == 1
    assert listing["results"][0]["id"] == str(run.pk)
    detail = api.get(f"/runs/{run.pk}").json()
    assert [s["name"] for s in detail["steps"]] == ["first", "second", "third", "undo"]
    assert detail["events"][0]["message"] == "Demo chain: queued"
    assert detail["eta"] is not None
    assert detail["progress"] == 0.0


def test_runs_filter_by_status(api):
    workflow.get_workflow("demo.chain").launch(params={})
    assert api.get("/runs?status=pending").json()["count"] == 1
    assert api.get("/runs?status=failed").json()["count"] == 0
    assert api.get("/runs?status=bogus").status_code == 400


def test_cancel_pending_run(api):
    run = workflow.get_workflow("demo.chain").launch(params={})
    response = api.post(f"/runs/{run.pk}/cancel", {"reason": "changed my mind"}, format="json")
    assert response.status_code == 202
    # Not started, but its cleanup still runs (tests/core/test_workflow.py follows it to the end on a worker).
    assert response.json()["status"] == RunStatus.CLEANING_UP
    assert api.post(f"/runs/{run.pk}/cancel", {}, format="json").status_code == 202  # still stopping
    Run.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)
    again = api.post(f"/runs/{run.pk}/cancel", {}, format="json")
    assert again.status_code == 409
    assert again.json() == {"detail": "Run already cancelled; nothing to cancel.", "code": "run_ended"}


def test_runs_are_read_only(api):
    run = workflow.get_workflow("demo.chain").launch(params={})
    assert api.delete(f"/runs/{run.pk}").status_code == 405
    assert api.patch(f"/runs/{run.pk}", {"status": "succeeded"}, format="json").status_code == 405


def test_admin_shows_runs(admin_client):
    run = workflow.get_workflow("demo.chain").launch(params={})
    response = admin_client.get("/admin/core/run/")
    assert response.status_code == 200
    assert b"Demo chain" in response.content
    detail = admin_client.get(f"/admin/core/run/{run.pk}/change/")
    assert detail.status_code == 200
    assert b"First step" in detail.content
