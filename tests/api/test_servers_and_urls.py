"""The same API server registers once however its URL is spelled; URLs the service or a cluster will connect to
(a cluster's ingress, a model's S3 endpoint) pass the outbound-address guard."""

from __future__ import annotations

import json

import pytest

from clusters.kubeconfig import server_identity
from clusters.models import Cluster
from core.models import Run
from tests.kubeconfig.test_validate import with_server


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://localhost:6443", "https://127.0.0.1:6443/"),
        ("https://LOCALHOST:6443", "https://[::1]:6443"),
        ("https://k8s.Example.COM", "https://k8s.example.com.:443/"),
        ("HTTPS://10.0.0.1:443", "https://10.0.0.1"),
        ("https://2130706433:6443", "https://127.0.0.1:6443"),
        ("https://[::ffff:10.0.0.1]:6443", "https://10.0.0.1:6443"),
        ("https://[2001:DB8:0:0::1]:6443", "https://[2001:db8::1]:6443//"),
        ("https://rancher.example.com/k8s/clusters/c-1/", "https://rancher.example.com/k8s/clusters/c-1"),
    ],
)
def test_spellings_of_one_server_have_one_identity(a, b):
    assert server_identity(a) == server_identity(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://127.0.0.1:6443", "https://127.0.0.2:6443"),  # a server may bind 127.0.0.2 alone
        ("https://10.0.0.1:6443", "https://10.0.0.1:6444"),
        ("https://api.example.com", "https://93.184.216.34"),  # names are not resolved (SNI, changing DNS)
        ("https://rancher.example.com/k8s/clusters/c-1", "https://rancher.example.com/k8s/clusters/c-2"),
        ("https://rancher.example.com/k8s/clusters/C-1", "https://rancher.example.com/k8s/clusters/c-1"),
    ],
)
def test_different_servers_keep_different_identities(a, b):
    assert server_identity(a) != server_identity(b)


@pytest.mark.django_db
def test_the_same_loopback_server_registers_once_however_spelled(api, settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    first = api.post(
        "/clusters/register",
        {"name": "dev-a", "kubeconfig": with_server("https://localhost:16443")},
        format="json",
    )
    assert first.status_code == 202, first.json()
    for spelling in ("https://127.0.0.1:16443/", "https://LocalHost:16443", "https://[::1]:16443"):
        again = api.post(
            "/clusters/register", {"name": "dev-b", "kubeconfig": with_server(spelling)}, format="json"
        )
        assert again.status_code == 409, spelling
        assert again.json()["code"] == "server_registered"
    assert list(Cluster.objects.values_list("name", flat=True)) == ["dev-a"]

    other = Cluster.objects.create(name="other", server_url="https://10.0.0.9:6443")
    move = api.patch(
        f"/clusters/{other.pk}", {"kubeconfig": with_server("https://127.0.0.1:16443")}, format="json"
    )
    assert move.status_code == 409 and move.json()["code"] == "server_registered"
    other.refresh_from_db()
    assert other.server_url == "https://10.0.0.9:6443"


REFUSED_URLS = [
    ("http://169.254.169.254/latest", "cloud metadata endpoint"),
    ("http://169.254.10.1", "link-local"),
    ("ftp://files.example.com", "must use http:// or https://"),
    ("https://user:hunter2@ingress.example.com", "must not contain user info"),
    ("http://0.0.0.0:80", "unspecified"),
    ("http://[fe80::1]", "link-local"),
    ("http://metadata.google.internal", "cloud metadata endpoint"),
    ("http://127.0.0.1:8080", "loopback"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "words"), REFUSED_URLS)
def test_ingress_url_goes_through_the_address_guard_on_patch_and_register(api, url, words):
    cluster = Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443", ingress_url="")
    response = api.patch(f"/clusters/{cluster.pk}", {"ingress_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert words in response.json()["errors"]["ingress_url"][0]
    assert "hunter2" not in json.dumps(response.json())
    cluster.refresh_from_db()
    assert cluster.ingress_url == ""

    register = api.post(
        "/clusters/register",
        {"name": "c2", "kubeconfig": with_server("https://10.0.0.2:6443"), "ingress_url": url},
        format="json",
    )
    assert register.status_code == 400 and words in register.json()["errors"]["ingress_url"][0]
    assert not Cluster.objects.filter(name="c2").exists() and not Run.objects.exists()


@pytest.mark.django_db
def test_a_public_ingress_url_is_accepted(api):
    cluster = Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443")
    response = api.patch(
        f"/clusters/{cluster.pk}", {"ingress_url": "https://apps.example.com"}, format="json"
    )
    assert response.status_code == 200 and response.json()["ingress_url"] == "https://apps.example.com"


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "words"), REFUSED_URLS)
def test_s3_endpoint_goes_through_the_address_guard(api, url, words):
    response = api.post(
        "/deployments/deploy",
        {
            "cluster": "none", "name": "d1", "model": "llama-3.1-8b", "source": "s3",
            "s3": {"endpoint": url, "bucket": "models", "access_key_id": "AKIA", "secret_access_key": "s3cr3t"},
        },
        format="json",
    )  # fmt: skip
    assert response.status_code == 400
    assert words in response.json()["errors"]["s3.endpoint"][0]
    assert "s3cr3t" not in response.content.decode()
    assert not Run.objects.exists()
