"""Login and API throttling, and a Content-Security-Policy on every response (issue 14, item 8)."""

from __future__ import annotations

import re

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from .conftest import api_client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "a-long-test-password"  # the admin_user fixture's


def _login(client: Client, username: str, password: str, **extra):
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def test_the_nth_wrong_admin_password_locks_the_login_out(settings, admin_user):
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5  # the documented default (ADMIN_LOGIN_FAILURE_LIMIT)
    client = Client()
    for attempt in range(1, limit):
        response = _login(client, "admin", f"wrong-{attempt}")
        assert response.status_code == 200, attempt  # the form again, with its error
    locked = _login(client, "admin", "wrong-last")
    assert locked.status_code == 429
    # Locked out: even the right password is refused until the cool-off ends (or `manage.py axes_reset`).
    assert _login(client, "admin", PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session
    # Counted per username and address: another address may still log in.
    other = Client(REMOTE_ADDR="127.0.0.2")
    assert _login(other, "admin", PASSWORD).status_code == 302
    call_command("axes_reset")
    assert not AccessAttempt.objects.exists()
    assert _login(client, "admin", PASSWORD).status_code == 302


def test_a_spoofed_forwarded_for_does_not_escape_the_lockout(settings, admin_user):
    client = Client()
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "admin", "wrong", HTTP_X_FORWARDED_FOR=f"127.0.1.{attempt}")
    # TRUSTED_PROXY_COUNT=0 (default): the header is not believed, the socket's address is.
    assert _login(client, "admin", PASSWORD, HTTP_X_FORWARDED_FOR="127.0.2.1").status_code == 429


def test_the_api_answers_429_past_the_user_rate(settings, admin_user):
    settings.API_THROTTLE_USER_RATE = "5/min"
    client = api_client(admin_user)
    assert [client.get("/runs").status_code for _ in range(5)] == [200] * 5
    throttled = client.get("/runs")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    settings.API_THROTTLE_USER_RATE = ""  # empty: off
    assert client.get("/runs").status_code == 200


def test_anonymous_requests_are_throttled_per_address(settings):
    settings.API_THROTTLE_ANON_RATE = "3/min"
    client = APIClient()
    assert [client.get("/schema").status_code for _ in range(3)] == [200] * 3
    assert client.get("/schema").status_code == 429
    assert APIClient(REMOTE_ADDR="127.0.0.2").get("/schema").status_code == 200


def test_failed_token_logins_are_limited_per_address(settings, admin_user):
    settings.API_AUTH_FAILURE_LIMIT = 3
    guesser = APIClient()
    statuses = []
    for guess in range(4):
        guesser.credentials(HTTP_AUTHORIZATION=f"Token {guess:064x}")
        statuses.append(guesser.get("/runs").status_code)
    assert statuses == [401, 401, 401, 429]
    # From that address every token login is refused until the window ends, the right key included ...
    valid = api_client(admin_user)
    refused = valid.get("/runs")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    # ... while other addresses are not affected.
    other = api_client(admin_user)
    other.defaults["REMOTE_ADDR"] = "127.0.0.2"
    assert other.get("/runs").status_code == 200


def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(settings, admin_user):
    settings.API_AUTH_FAILURE_LIMIT = 2
    settings.TRUSTED_PROXY_COUNT = 1
    guesser = APIClient(HTTP_X_FORWARDED_FOR="127.0.3.1")
    guesser.credentials(HTTP_AUTHORIZATION="Token " + "0" * 64)
    assert [guesser.get("/runs").status_code for _ in range(3)] == [401, 401, 429]
    neighbour = api_client(admin_user)
    neighbour.defaults["HTTP_X_FORWARDED_FOR"] = "127.0.3.2"  # same proxy, another client
    assert neighbour.get("/runs").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/runs",
        "/admin/login/",
        "/docs",
        "/redoc",
        "/schema",
        "/static/admin/css/base.css",
        "/nowhere",
    ],
)
def test_every_response_carries_a_content_security_policy(client, path):
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/admin/login/"])
def test_the_docs_and_admin_pages_need_no_inline_script(client, path):
    html = client.get(path).content.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts, path
    inline = [body for attrs, body in scripts if "src=" not in attrs and body.strip()]
    assert inline == [], path
    for attrs, _ in scripts:
        src = re.search(r'src="([^"]+)"', attrs).group(1)
        assert src.startswith("/"), src  # the sidecar's local assets, never a CDN
        assert client.get(src).status_code == 200, src


def test_swagger_ui_start_up_script_is_served_from_the_same_origin(client):
    script = client.get("/docs?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in script.content
