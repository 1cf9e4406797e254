"""The console's "Register cluster" form (issue "The operators' console and the API contract", item 11).

The form at ``/admin/clusters/cluster/add/`` is ``POST /clusters/register`` for people: a kubeconfig upload, checked
by the API's serializer and ``clusters.services`` (the same words for the same mistakes: each refusal is compared
with the API's answer to the same body), that starts the registration run and opens its page. A refusal shows the
form again with the reason and creates nothing, and the kubeconfig's secrets never come back in the page. With a
real worker and the devcluster, a cluster registered through the form becomes available.
"""

from __future__ import annotations

import base64
import html
import re

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from devcluster.testing import devcluster_fixture
from tests.security.conftest import api_client
from tests.worker import wait_for

ADD = "/admin/clusters/cluster/add/"
TOKEN = "sha256~form-secret-token-value"  # must never appear in a page
PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n").decode()


def kubeconfig(server: str = "https://10.20.30.40:6443", user: dict | None = None) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "prod",
            "clusters": [{"name": "prod", "cluster": {"server": server, "certificate-authority-data": PEM}}],
            "users": [{"name": "admin", "user": user or {"token": TOKEN}}],
            "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "admin"}}],
        }
    )


def upload(text: str | bytes, name: str = "kubeconfig.yaml") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode() if isinstance(text, str) else text, "application/yaml")


def _text(response) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def _errors(response) -> str:
    """The text of the page's error lists."""
    return " ".join(
        html.unescape(re.sub(r"<[^>]+>", " ", m)).strip()
        for m in re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    )


@pytest.fixture
def operator(make_user):
    """Who registers clusters: may add clusters and follow runs."""
    return make_user("registrar", "clusters.add_cluster", "clusters.view_cluster", "core.view_run")


@pytest.fixture
def browser(client, operator) -> Client:
    client.force_login(operator)
    return client


# --- the form ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_form_has_the_contract_fields_and_the_list_offers_it(browser, client, make_user):
    page = browser.get(ADD)
    assert page.status_code == 200
    body = page.content.decode()
    assert 'enctype="multipart/form-data"' in body
    for field, kind in (("name", "text"), ("kubeconfig", "file"), ("ingress_url", "text")):
        assert re.search(rf'<input type="{kind}" name="{field}"[^>]*id="id_{field}"', body), field
    assert re.search(r'<textarea name="labels"[^>]*id="id_labels">\s*</textarea>', body)  # empty, not "null"
    assert re.search(r'<input type="submit"[^>]*name="_save"', body)

    listing = browser.get("/admin/clusters/cluster/").content.decode()
    assert 'id="register-cluster"' in listing and f'href="{ADD}"' in listing

    client.force_login(make_user("viewer", "clusters.view_cluster"))
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {"name": "x", "kubeconfig": upload(kubeconfig())}).status_code == 403
    assert 'id="register-cluster"' not in client.get("/admin/clusters/cluster/").content.decode()
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_registering_starts_the_run_and_opens_its_page(browser, operator):
    response = browser.post(
        ADD,
        {
            "name": "prod-eu",
            "kubeconfig": upload(kubeconfig()),
            "ingress_url": "https://models.example.com",
            "labels": '{"team": "ml"}',
        },
    )
    assert response.status_code == 302
    cluster = Cluster.objects.get()
    run = Run.objects.get()
    assert response["Location"] == f"/admin/core/run/{run.pk}/change/"
    assert (run.kind, run.subject_id, run.created_by) == ("cluster.register", str(cluster.pk), operator)
    assert (cluster.name, cluster.status, cluster.server_url) == (
        "prod-eu",
        ClusterStatus.REGISTERING,
        "https://10.20.30.40:6443",
    )
    assert (cluster.labels, cluster.ingress_url) == ({"team": "ml"}, "https://models.example.com")
    assert TOKEN in cluster.kubeconfig  # stored (encrypted at rest; the field decrypts it)
    assert browser.get(response["Location"]).status_code == 200


@pytest.mark.django_db
def test_without_the_run_permission_the_cluster_page_opens_instead(client, make_user):
    client.force_login(make_user("registrar", "clusters.add_cluster", "clusters.view_cluster"))
    response = client.post(ADD, {"name": "prod-eu", "kubeconfig": upload(kubeconfig())})
    cluster = Cluster.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/clusters/cluster/{cluster.pk}/change/"


# --- refusals ---------------------------------------------------------------------------------------------------

# (case, form fields, expected status, field the API names the error with or None for a service refusal)
REFUSALS = [
    ("exec user", {"kubeconfig": kubeconfig(user={"exec": {"command": "aws"}, "token": TOKEN})}, 400, None),
    ("http server", {"kubeconfig": kubeconfig(server="http://10.20.30.40:6443")}, 400, None),
    ("metadata address", {"kubeconfig": kubeconfig(server="https://169.254.169.254")}, 400, None),
    ("not YAML", {"kubeconfig": f"users:\n- token: {TOKEN}\n  bad: [\n"}, 400, None),
    ("too large", {"kubeconfig": b"a: " + b"x" * (1024 * 1024 + 10)}, 400, None),
    ("labels of numbers", {"labels": '{"gpu": 1}'}, 400, "labels"),
    ("bad name", {"name": "bad name!"}, 400, "name"),
    ("ingress on loopback", {"ingress_url": "http://127.0.0.1:8080"}, 400, "ingress_url"),
]


def _fields(overrides: dict) -> dict:
    fields = {"name": "prod-eu", "kubeconfig": kubeconfig(), "ingress_url": "", "labels": ""}
    fields.update(overrides)
    return fields


def _api_message(user, fields: dict, field: str | None) -> str:
    """What ``POST /clusters/register`` answers to the same body (multipart, the file as ``kubeconfig_file``)."""
    body = {k: v for k, v in fields.items() if k != "kubeconfig" and v != ""}
    body["kubeconfig_file"] = upload(fields["kubeconfig"])
    answer = api_client(user).post("/clusters/register", body, format="multipart")
    assert 400 <= answer.status_code < 500, answer.content
    data = answer.json()
    return data["errors"][field][0] if field else data["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(("case", "overrides", "status", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refusal_shows_the_apis_reason_creates_nothing_and_echoes_no_secret(
    browser, operator, case, overrides, status, field
):
    fields = _fields(overrides)
    expected = _api_message(operator, fields, field)
    assert not Cluster.objects.exists()  # the API refused it too

    response = browser.post(ADD, {**fields, "kubeconfig": upload(fields["kubeconfig"])})
    assert response.status_code == status
    assert expected in _errors(response), (expected, _errors(response))
    assert not Cluster.objects.exists() and not Run.objects.exists()
    content = response.content.decode()
    assert TOKEN not in content and "MIIBfake" not in content and PEM not in content
    assert re.search(r'<input type="file" name="kubeconfig"(?![^>]*value=)[^>]*>', content)  # empty again
    if field != "name":
        assert 'value="prod-eu"' in content  # what is not secret is kept for the next try


@pytest.mark.django_db
def test_a_missing_kubeconfig_is_named(browser):
    response = browser.post(ADD, {"name": "prod-eu"})
    assert response.status_code == 400
    row = re.search(
        r'<div class="form-row field-kubeconfig errors">.*?</ul>', response.content.decode(), re.S
    )
    assert row and "a kubeconfig file is required" in row.group(0)
    assert not Cluster.objects.exists()


@pytest.mark.django_db
def test_a_taken_name_or_server_is_a_conflict(browser, operator):
    assert browser.post(ADD, {"name": "prod-eu", "kubeconfig": upload(kubeconfig())}).status_code == 302
    Cluster.objects.update(status=ClusterStatus.AVAILABLE)

    same_name = _fields({"kubeconfig": kubeconfig(server="https://10.20.30.41:6443")})
    expected = _api_message(operator, same_name, None)
    response = browser.post(ADD, {**same_name, "kubeconfig": upload(same_name["kubeconfig"])})
    assert response.status_code == 409
    assert expected in _errors(response) and "already exists" in expected

    same_server = _fields({"name": "prod-eu-2"})
    expected = _api_message(operator, same_server, None)
    response = browser.post(ADD, {**same_server, "kubeconfig": upload(same_server["kubeconfig"])})
    assert response.status_code == 409
    assert expected in _errors(response) and "already registered" in expected
    assert TOKEN not in response.content.decode()
    assert Cluster.objects.count() == 1 and Run.objects.count() == 1


# --- end to end -------------------------------------------------------------------------------------------------

dc = devcluster_fixture(name="dc", nodes="cpu-small", clusters=1, scope="module")


@pytest.mark.django_db(transaction=True)
def test_a_cluster_registered_through_the_form_becomes_available(worker, dc, settings, make_user):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    client = Client()
    client.force_login(
        make_user("registrar", "clusters.add_cluster", "clusters.view_cluster", "core.view_run")
    )
    response = client.post(ADD, {"name": "dev-form", "kubeconfig": upload(dc.kubeconfig_yaml(dc.names[0]))})
    assert response.status_code == 302, _errors(response)
    run_id = response["Location"].split("/")[-3]

    def finished():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    run = wait_for(finished, timeout=90, what="the registration run to finish")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert Cluster.objects.get(name="dev-form").status == ClusterStatus.AVAILABLE
