"""Cloud credentials in the console (issue "The operators' console and the API contract", item 3).

They can be created (the secret inputs render, errors show at the field that has them, the API's rules apply)
and rotated: a blank secret input keeps the stored value, a value replaces it, an optional one can be cleared.
No page ever contains a stored secret; the page says how it is stored and which fields are set."""

from __future__ import annotations

import re

import pytest

from provisioning.models import CloudCredential

pytestmark = pytest.mark.django_db

ADD = "/admin/provisioning/cloudcredential/add/"
AWS = {"name": "aws-prod", "provider": "aws", "region": "eu-west-1", "description": ""}
KEY_ID, SECRET, TOKEN = (
    "AKIAEXAMPLEKEYID0001",
    "wJalrXUtnFEMI-secret-value-0001",
    "FwoGZXIvYXdzE-session-0001",
)


def _errors(page: str) -> dict[str, str]:
    """The field errors the page shows: {field name: message}."""
    found = re.findall(
        r'<div class="form-row errors field-(\w+)">\s*<ul class="errorlist"[^>]*><li>(.*?)</li>', page
    )
    return dict(found)


def test_the_add_page_renders_the_write_only_secret_inputs(admin_client):
    page = admin_client.get(ADD).content.decode()
    for name in ("access_key_id", "secret_access_key", "session_token", "client_id", "client_secret"):
        assert re.search(rf'<input type="password" name="{name}"', page), name


def test_an_aws_credential_is_created_and_its_secret_never_shown(admin_client, admin_user):
    data = {**AWS, "access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
    response = admin_client.post(ADD, data)
    assert response.status_code == 302, _errors(response.content.decode())
    credential = CloudCredential.objects.get(name="aws-prod")
    assert credential.secret == {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
    assert credential.created_by == admin_user
    page = admin_client.get(f"/admin/provisioning/cloudcredential/{credential.pk}/change/").content.decode()
    for value in (KEY_ID, SECRET, TOKEN):
        assert value not in page
    assert "encrypted" in page  # how it is stored, masked
    assert "Stored (never shown)" in page


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({**AWS, "access_key_id": KEY_ID}, "secret_access_key", "aws credentials need secret_access_key"),
        ({**AWS, "access_key_id": KEY_ID, "secret_access_key": SECRET, "client_id": "x"}, "client_id",
         "aws credentials take no field(s) client_id"),
        ({**AWS, "name": "prod creds!", "access_key_id": KEY_ID, "secret_access_key": SECRET}, "name",
         "This value does not match the required pattern"),
        ({"name": "az", "provider": "azure", "client_id": "c", "client_secret": "s", "subscription_id": "sub"},
         "tenant_id", "azure credentials need tenant_id"),
    ],
)  # fmt: skip
def test_refusals_show_at_the_field_and_store_nothing(admin_client, data, field, words):
    response = admin_client.post(ADD, data)
    assert response.status_code == 200
    page = response.content.decode()
    assert words in _errors(page).get(field, ""), _errors(page)
    assert not CloudCredential.objects.exists()
    assert SECRET not in page  # a refused form does not echo the secret back


def test_rotation_keeps_replaces_or_clears_each_secret(admin_client):
    admin_client.post(
        ADD, {**AWS, "access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
    )
    credential = CloudCredential.objects.get(name="aws-prod")
    url = f"/admin/provisioning/cloudcredential/{credential.pk}/change/"
    fields = {"name": "aws-prod", "region": "eu-west-1", "description": "rotated"}

    # Blank inputs keep every stored value.
    assert admin_client.post(url, fields).status_code == 302
    credential.refresh_from_db()
    assert credential.secret == {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
    assert credential.description == "rotated"

    # A value replaces that one secret; "clear" drops the optional session token.
    response = admin_client.post(
        url, {**fields, "secret_access_key": "new-secret-0002", "clear_session_token": "on"}
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.secret == {"access_key_id": KEY_ID, "secret_access_key": "new-secret-0002"}
    assert credential.provider == "aws"

    # Another provider's secret is refused by the same rule as on creation, and changes nothing.
    refused = admin_client.post(url, {**fields, "client_secret": "nope"})
    assert refused.status_code == 200
    assert "take no field(s) client_secret" in _errors(refused.content.decode()).get("client_secret", "")
    credential.refresh_from_db()
    assert credential.secret == {"access_key_id": KEY_ID, "secret_access_key": "new-secret-0002"}
    page = admin_client.get(url).content.decode()
    assert "new-secret-0002" not in page and KEY_ID not in page


def test_a_view_only_user_sees_the_credential_without_its_secret(admin_client, make_user, client):
    admin_client.post(ADD, {**AWS, "access_key_id": KEY_ID, "secret_access_key": SECRET})
    credential = CloudCredential.objects.get(name="aws-prod")
    client.force_login(make_user("auditor", "provisioning.view_cloudcredential"))
    page = client.get(f"/admin/provisioning/cloudcredential/{credential.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "aws-prod" in text and "encrypted" in text
    assert KEY_ID not in text and SECRET not in text
    assert client.post(page.request["PATH_INFO"], {**AWS, "secret_access_key": "x"}).status_code == 403
