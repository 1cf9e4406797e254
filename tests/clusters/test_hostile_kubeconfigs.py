"""Hostile kubeconfigs sent to the API: each refused with 400 naming the problem, nothing stored, no run."""

from __future__ import annotations

import copy

import pytest
import yaml

from clusters.models import Cluster
from core.models import Run
from devcluster.testing import devcluster_fixture

hostile_dc = devcluster_fixture(name="hostile_dc", nodes="cpu-small", scope="module")

pytestmark = pytest.mark.django_db


def _user(c):
    return c["users"][0]["user"]


def _cluster(c):
    return c["clusters"][0]["cluster"]


def _server(url):
    def mutate(c):
        _cluster(c)["server"] = url

    return mutate


def _second_user(body):
    def mutate(c):
        c["users"].append({"name": "other", "user": body})

    return mutate


CASES = [
    (
        "exec in the current user",
        lambda c: _user(c).update(exec={"command": "aws", "apiVersion": "v1"}),
        "exec",
    ),
    ("exec in an unused user", _second_user({"exec": {"command": "sh", "apiVersion": "v1"}}), "exec"),
    ("auth-provider", lambda c: _user(c).update({"auth-provider": {"name": "gcp"}}), "auth-provider"),
    ("tokenFile", lambda c: _user(c).update(tokenFile="/etc/passwd"), "tokenFile"),
    (
        "client-certificate path",
        lambda c: _user(c).update({"client-certificate": "/tmp/c"}),
        "client-certificate",
    ),
    ("client-key path", _second_user({"client-key": "/root/.ssh/id_rsa"}), "client-key"),
    (
        "certificate-authority path",
        lambda c: _cluster(c).update({"certificate-authority": "/ca"}),
        "certificate-authority",
    ),
    ("plain http", _server("http://10.0.0.1:6443"), "https"),
    ("metadata IP", _server("https://169.254.169.254"), "metadata"),
    ("metadata name", _server("https://metadata.google.internal"), "metadata"),
    ("AWS IPv6 metadata", _server("https://[fd00:ec2::254]"), "metadata"),
    ("link-local", _server("https://169.254.10.10:6443"), "link-local"),
    ("unspecified", _server("https://0.0.0.0:6443"), "unspecified"),
    ("loopback decimal", _server("https://2130706433:6443"), "loopback"),
    ("loopback hex", _server("https://0x7f000001:6443"), "loopback"),
    ("loopback short", _server("https://127.1:6443"), "loopback"),
    ("loopback mapped v6", _server("https://[::ffff:127.0.0.1]:6443"), "loopback"),
    ("localhost", _server("https://localhost:6443"), "loopback"),
    ("proxy to metadata", lambda c: _cluster(c).update({"proxy-url": "http://169.254.169.254"}), "metadata"),
    (
        "skip TLS verify",
        lambda c: _cluster(c).update({"insecure-skip-tls-verify": True}),
        "insecure-skip-tls-verify",
    ),
    ("missing current context", lambda c: c.update({"current-context": "nope"}), "nope"),
]


@pytest.mark.parametrize(("label", "mutate", "reason"), CASES, ids=[c[0] for c in CASES])
def test_hostile_kubeconfig_refused_and_nothing_stored(api, settings, hostile_dc, label, mutate, reason):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = False
    config = copy.deepcopy(hostile_dc.kubeconfig())
    _cluster(config)["server"] = "https://10.20.30.40:6443"  # a routable private address: valid on its own
    mutate(config)
    response = api.post(
        "/clusters/register", {"name": "hostile", "kubeconfig": yaml.safe_dump(config)}, format="json"
    )
    assert response.status_code == 400, (label, response.json())
    assert response.json()["code"] == "kubeconfig_invalid"
    detail = response.json()["detail"]
    assert detail.startswith("kubeconfig refused:")
    assert reason.lower() in detail.lower(), detail
    assert _user(hostile_dc.kubeconfig())["token"] not in detail
    assert not Cluster.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a: &x [1]\nb: *x\n", "alias"),
        ("- just\n- a list\n", "mapping"),
        ("x" * (1024 * 1024 + 1), "bytes"),
    ],
    ids=["yaml alias", "not a mapping", "too large"],
)
def test_malformed_documents_refused(api, raw, reason):
    response = api.post("/clusters/register", {"name": "bad", "kubeconfig": raw}, format="json")
    assert response.status_code == 400
    assert reason in response.json()["detail"].lower()
    assert not Cluster.objects.exists()


def test_non_utf8_upload_refused(api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("kubeconfig", b"apiVersion: v1\nkind: Config\nx: \xff\xfe\n")
    response = api.post("/clusters/register", {"name": "bin", "kubeconfig_file": upload}, format="multipart")
    assert response.status_code == 400
    assert "utf-8" in response.json()["detail"].lower()
    assert not Cluster.objects.exists()


def test_request_must_carry_exactly_one_kubeconfig(api):
    response = api.post("/clusters/register", {"name": "none"}, format="json")
    assert response.status_code == 400
    assert "exactly one of" in str(response.json())
