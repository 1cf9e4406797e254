"""API tokens are stored hashed and shown once; no admin page lists or shows a key (issue 14, item 4)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from core.tokens import create_token

from .conftest import api_client

pytestmark = pytest.mark.django_db


def _authenticates(key: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/runs").status_code == 200


def test_only_a_digest_of_the_key_is_stored(admin_user):
    token, key = create_token(admin_user)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {AuthToken._meta.db_table}")  # noqa: S608 - a fixed table name
        rows = cursor.fetchall()
    assert rows and not any(key in str(value) for row in rows for value in row)
    assert token.digest != key and len(token.digest) == 128
    assert _authenticates(key)
    assert not _authenticates(key[:-1] + ("0" if key[-1] != "0" else "1"))


def test_a_view_only_staff_user_sees_no_key(admin_user, view_only_staff):
    _token, key = create_token(admin_user)  # the superuser's token: what the attacker read in full
    client = Client()
    client.force_login(view_only_staff)
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404  # DRF's plain-key admin is gone
    listing = client.get("/admin/knox/authtoken/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert html.count('class="field-state"') == 1  # the superuser's token is listed: user, dates, state
    assert key not in html and key[:15] not in html  # neither the key nor knox's stored lookup prefix
    token = AuthToken.objects.get(user=admin_user)
    detail = client.get(f"/admin/knox/authtoken/{token.pk}/change/")
    assert detail.status_code == 200 and key[:15] not in detail.content.decode()
    # No creating, changing or revoking for a viewer.
    assert client.get("/admin/knox/authtoken/add/").status_code == 403
    assert "Revoke selected tokens" not in html
    client.post("/admin/knox/authtoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})
    assert AuthToken.objects.filter(pk=token.pk).exists()


def test_a_superuser_creates_a_token_in_the_admin_and_sees_its_key_once(admin_user, make_user):
    holder = make_user("holder", "core.view_run")
    client = Client()
    client.force_login(admin_user)
    assert client.get("/admin/knox/authtoken/add/").status_code == 200
    created = client.post("/admin/knox/authtoken/add/", {"user": holder.pk, "days": "30"})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    key = re.search(r'<code id="token-key"[^>]*>([0-9a-f]{64})</code>', created.content.decode()).group(1)
    token = AuthToken.objects.get(user=holder)
    assert timezone.now() + timedelta(days=29) < token.expiry < timezone.now() + timedelta(days=31)
    assert _authenticates(key)
    for page in ("/admin/knox/authtoken/", f"/admin/knox/authtoken/{token.pk}/change/", "/admin/"):
        assert key[:15] not in client.get(page).content.decode(), page
    # Revoking (the superuser may) ends the token at once.
    revoked = client.post(
        "/admin/knox/authtoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]}, follow=True
    )
    assert "Revoked 1 token(s)." in revoked.content.decode()
    assert not _authenticates(key)


def test_a_staff_user_who_is_not_superuser_cannot_create_tokens(make_user):
    staff = make_user("tokenadder", "knox.add_authtoken", "knox.view_authtoken", staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/knox/authtoken/add/").status_code == 403
    assert client.post("/admin/knox/authtoken/add/", {"user": staff.pk}).status_code == 403
    assert not AuthToken.objects.exists()


def test_ensure_admin_and_create_token_print_the_key_once(db):
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    key = re.search(r"API token: ([0-9a-f]{64})", out.getvalue()).group(1)
    assert _authenticates(key)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert key not in again.getvalue() and "not shown again" in again.getvalue()

    quiet = io.StringIO()
    call_command("create_token", "admin", "--days", "1", "--quiet", stdout=quiet)
    second = quiet.getvalue().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", second) and second != key
    assert _authenticates(second)
    assert AuthToken.objects.filter(expiry__isnull=False).count() == 1  # --days 1; ensure_admin's: no expiry


def test_expired_tokens_are_refused(admin_user):
    _token, key = create_token(admin_user, days=1)
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    assert not _authenticates(key)


def test_a_token_header_that_is_not_utf8_is_a_401_not_a_500(admin_user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token \xe9\xe9\xe9")
    response = client.get("/runs")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_anonymous_and_wrong_tokens_still_get_401(admin_user):
    assert APIClient().get("/runs").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/runs").status_code == 401
    assert api_client(admin_user).get("/runs").status_code == 200


def test_a_deactivated_users_token_is_refused_and_a_wrong_key_with_a_real_prefix_too(make_user):
    """The token query reads the token, its user and the user's permissions in one statement: a deactivated user
    is refused with the next request, as is a key that shares a real token's lookup prefix but not its digest."""
    user = make_user("reader", "core.view_run")
    _token, key = create_token(user)
    assert _authenticates(key)
    forged = key[:15] + ("0" if key[15] != "0" else "1") + key[16:]
    assert not _authenticates(forged)
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert not _authenticates(key)
    assert AuthToken.objects.filter(
        user=user
    ).exists()  # refused, not deleted: reactivating the user restores it
