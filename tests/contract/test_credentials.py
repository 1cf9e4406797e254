"""Cloud credentials are rotated with ``PATCH /credentials/{id}``: the secret fields are write-only, the ones given
replace the stored ones (``null`` removes an optional one), the result is checked as a new credential is, and no
answer ever shows a secret."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework.test import APIClient

from core.tokens import create_token
from provisioning import services
from provisioning.models import CloudCredential

pytestmark = pytest.mark.django_db

OLD_KEY, OLD_SECRET = "AKIAOLDOLDOLDOLD", "old/Secret+Value/0123456789abcdefghijkl"
NEW_KEY, NEW_SECRET = "AKIANEWNEWNEWNEW", "new/Secret+Value/9876543210zyxwvutsrqpo"


@pytest.fixture
def credential() -> CloudCredential:
    return services.create_credential(
        name="aws-prod", provider="aws", region="us-east-1",
        secret={"access_key_id": OLD_KEY, "secret_access_key": OLD_SECRET, "session_token": "old-session"},
    )  # fmt: skip


def _stored(credential: CloudCredential) -> dict:
    return CloudCredential.objects.get(pk=credential.pk).secret


def test_a_patch_with_a_new_secret_replaces_the_old_one_and_never_shows_it(api, credential):
    response = api.patch(
        f"/credentials/{credential.pk}",
        {"access_key_id": NEW_KEY, "secret_access_key": NEW_SECRET, "session_token": None},
        format="json",
    )
    assert response.status_code == 200, response.json()
    text = response.content.decode()
    for secret in (OLD_KEY, OLD_SECRET, NEW_KEY, NEW_SECRET, "old-session"):
        assert secret not in text
    assert response.json()["secret"].startswith("encrypted (key id ")
    # Rotated to long-lived keys: the old session token is gone with the old pair.
    assert _stored(credential) == {"access_key_id": NEW_KEY, "secret_access_key": NEW_SECRET}
    for listing in (api.get("/credentials"), api.get(f"/credentials/{credential.pk}")):
        assert NEW_SECRET not in listing.content.decode() and OLD_SECRET not in listing.content.decode()
    with connection.cursor() as cursor:
        table = CloudCredential._meta.db_table  # from the model, not from input
        cursor.execute(f"SELECT secret FROM {table} WHERE id = %s", [credential.pk])  # noqa: S608
        [raw] = cursor.fetchone()
    assert raw and NEW_SECRET not in str(raw)  # the column holds ciphertext


def test_secret_fields_not_given_are_kept(api, credential):
    response = api.patch(f"/credentials/{credential.pk}", {"secret_access_key": NEW_SECRET}, format="json")
    assert response.status_code == 200
    assert _stored(credential) == {
        "access_key_id": OLD_KEY, "secret_access_key": NEW_SECRET, "session_token": "old-session"
    }  # fmt: skip


def test_plain_fields_change_without_touching_the_secret(api, credential):
    response = api.patch(
        f"/credentials/{credential.pk}", {"region": "eu-west-1", "name": "aws-eu"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["region"]) == ("aws-eu", "eu-west-1")
    assert _stored(credential)["secret_access_key"] == OLD_SECRET


@pytest.mark.parametrize(
    ("body", "status", "code", "fields"),
    [
        ({"secret_access_key": None}, 400, "invalid_credentials", ["secret_access_key"]),  # as on creation
        ({"client_secret": "x"}, 400, "invalid_credentials", ["client_secret"]),  # not an AWS field
        ({"provider": "azure"}, 400, "unknown_field", None),  # a credential keeps its provider
        ({"secret_access_key": ""}, 400, "invalid", None),
        ({"access_key_id": "A" * 201}, 400, "invalid", None),
        ({}, 400, "invalid", None),
        ({"name": "taken"}, 409, "name_taken", None),
    ],
)
def test_a_patch_is_checked_as_a_creation_is_and_changes_nothing_when_refused(
    api, credential, body, status, code, fields
):
    services.create_credential(
        name="taken", provider="aws", secret={"access_key_id": "A", "secret_access_key": "B"}
    )
    response = api.patch(f"/credentials/{credential.pk}", body, format="json")
    assert response.status_code == status, response.json()
    assert response.json()["code"] == code
    if fields is not None:
        assert response.json()["fields"] == fields
    assert _stored(credential)["secret_access_key"] == OLD_SECRET
    assert CloudCredential.objects.get(pk=credential.pk).name == "aws-prod"


def test_an_azure_credential_keeps_its_tenant_and_subscription(api):
    azure = services.create_credential(
        name="az", provider="azure", tenant_id="t", subscription_id="s",
        secret={"client_id": "c", "client_secret": "old"},
    )  # fmt: skip
    response = api.patch(f"/credentials/{azure.pk}", {"tenant_id": ""}, format="json")
    assert response.status_code == 400 and response.json()["fields"] == ["tenant_id"]
    # Azure rotates the application's secret; the client id stays.
    ok = api.patch(f"/credentials/{azure.pk}", {"client_secret": "new"}, format="json")
    assert ok.status_code == 200 and _stored(azure) == {"client_id": "c", "client_secret": "new"}


def test_rotating_needs_the_change_permission_and_answers_identifiers_without_view(
    django_user_model, credential
):
    user = django_user_model.objects.create_user("rotator", password="a-long-test-password")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user)[1]}")
    body = {"access_key_id": NEW_KEY, "secret_access_key": NEW_SECRET}
    assert client.patch(f"/credentials/{credential.pk}", body, format="json").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="change_cloudcredential"))
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {create_token(django_user_model.objects.get(pk=user.pk))[1]}"
    )
    response = client.patch(f"/credentials/{credential.pk}", body, format="json")
    assert response.status_code == 200 and response.json() == {"id": credential.pk, "name": "aws-prod"}
    assert _stored(credential)["access_key_id"] == NEW_KEY
