"""Bad input gets a clear 4xx, never a 500, and changes nothing: deep JSON, huge bodies, unbounded fields, huge
ids, OPTIONS on a view without a serializer."""

from __future__ import annotations

import json
import uuid

import pytest

from clusters.models import Cluster
from core.models import Run

pytestmark = pytest.mark.django_db

NESTED_5000 = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("path", ["/deployments/plan", "/clusters/register", "/deployments/deploy"])
def test_json_nested_five_thousand_levels_is_a_400_on_every_json_endpoint(api, path):
    # /clusters/register lists DRF's own JSONParser in its view: the negotiation swaps in the bounded one.
    response = api.post(path, data=NESTED_5000, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert "nests deeper than 64 levels" in response.json()["detail"]


def test_json_nested_deeper_than_the_limit_but_within_the_decoder_is_refused_too(api):
    body = {"cluster": "x", "model": "y", "engine_args": []}
    deep: object = "leaf"
    for _ in range(100):
        deep = {"a": deep}
    body["benchmark"] = deep
    response = api.post("/deployments/plan", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert "nests deeper than 64 levels" in response.json()["detail"]


def test_body_over_the_cap_is_413_before_anything_reads_it(api, settings):
    # 3 MiB in one env value: over the default 2 MiB cap (the 50 MB answered 200 with 104 MB).
    body = json.dumps({"cluster": "x", "model": "llama-3.1-8b", "env": {"BIG": "x" * (3 * 1024 * 1024)}})
    response = api.post("/deployments/plan", data=body, content_type="application/json")
    assert response.status_code == 413
    answer = response.json()
    assert answer["code"] == "body_too_large" and answer["limit"] == 2 * 1024 * 1024
    assert "API_MAX_BODY_BYTES" in answer["detail"]
    assert len(response.content) < 1000

    # Multipart bodies are capped the same way (Django would spool the file to disk whatever its size).
    settings.API_MAX_BODY_BYTES = 4096
    upload = api.post(
        "/clusters/register",
        data={"name": "big", "kubeconfig": "x" * 10_000},
        format="multipart",
    )
    assert upload.status_code == 413 and upload.json()["code"] == "body_too_large"
    assert not Cluster.objects.exists()


def test_content_length_that_is_no_number_is_a_400(api):
    response = api.generic("POST", "/deployments/plan", "{}", "application/json", CONTENT_LENGTH="12x")
    assert response.status_code == 400 and response.json()["code"] == "bad_content_length"


def _plan(api, **fields):
    return api.post(
        "/deployments/plan", {"cluster": "none", "model": "llama-3.1-8b", **fields}, format="json"
    )


def test_env_values_names_and_counts_are_bounded(api):
    too_long = _plan(api, env={"BIG": "x" * (16 * 1024 + 1)})
    assert too_long.status_code == 400
    assert "16384" in json.dumps(too_long.json()["errors"]["env.BIG"])
    too_many = _plan(api, env={f"V{i}": "1" for i in range(101)})
    assert too_many.status_code == 400 and "at most 100" in json.dumps(too_many.json()["errors"]["env"])
    long_name = _plan(api, env={"N" * 129: "1"})
    assert long_name.status_code == 400 and "at most 128" in json.dumps(long_name.json()["errors"]["env"])
    args = _plan(api, engine_args=["--x"] * 101)
    assert args.status_code == 400 and "engine_args" in args.json()["errors"]
    for field, value in [("dtype", "x" * 33), ("revision", "r" * 257), ("model", "m" * 201)]:
        response = _plan(api, **{field: value})
        assert response.status_code == 400 and field in response.json()["errors"], field


def test_cluster_labels_are_bounded_on_patch_and_nothing_changes(api):
    cluster = Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443", labels={"team": "a"})
    for labels, words in [
        ({f"k{i}": "v" for i in range(65)}, "at most 64 labels"),
        ({"team": "v" * 257}, "values are at most 256"),
        ({"k" * 129: "v"}, "1 to 128 characters"),
        ({"": "v"}, "1 to 128 characters"),
    ]:
        response = api.patch(f"/clusters/{cluster.pk}", {"labels": labels}, format="json")
        assert response.status_code == 400, response.content
        assert words in json.dumps(response.json())
    cluster.refresh_from_db()
    assert cluster.labels == {"team": "a"}
    ok = api.patch(f"/clusters/{cluster.pk}", {"labels": {"team": "b"}}, format="json")
    assert ok.status_code == 200 and ok.json()["labels"] == {"team": "b"}


def test_options_on_the_approve_action_describes_it(api):
    response = api.options(f"/runs/{uuid.uuid4()}/approve")
    assert response.status_code == 200
    assert response.json()["name"]
    assert "actions" not in response.json()  # a bodiless POST has no fields to describe


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/clusters/{id}"),
        ("patch", "/clusters/{id}"),
        ("delete", "/clusters/{id}"),
        ("get", "/clusters/{id}/nodes"),
        ("get", "/clusters/{id}/health"),
        ("get", "/deployments/{id}"),
        ("delete", "/deployments/{id}"),
        ("post", "/deployments/{id}/benchmark"),
        ("get", "/benchmarks/{id}"),
        ("get", "/credentials/{id}"),
    ],
)
def test_an_id_of_35_digits_is_not_found(api, method, path):
    response = getattr(api, method)(path.format(id="9" * 35), {}, format="json")
    assert response.status_code == 404


def test_a_35_digit_cluster_reference_in_a_body_is_a_400(api):
    response = _plan(api, cluster=int("9" * 35))
    assert response.status_code == 400 and "cluster" in response.json()["errors"]
    assert not Run.objects.exists()


def test_nul_characters_are_a_400_not_a_database_error(api):
    # Found by schemathesis: PostgreSQL takes NUL neither in text nor in jsonb (DataError, a 500).
    as_json = _plan(api, cluster="\x00\x07")
    assert as_json.status_code == 400 and "NUL" in as_json.json()["detail"]
    as_form = api.post(
        "/deployments/plan", {"cluster": "\x00\x07", "model": "llama-3.1-8b"}, format="multipart"
    )
    # Bodies other than the kubeconfig upload are JSON only (a form cannot carry their nested fields).
    assert (as_form.status_code, as_form.json()["code"]) == (415, "unsupported_media_type")
    in_json = api.post(
        "/deployments/plan",
        data='{"cluster": "c", "model": {"name": "a\\u0000b"}}',
        content_type="application/json",
    )
    assert in_json.status_code == 400 and "NUL" in in_json.json()["detail"]
    cluster = Cluster.objects.create(name="c1", server_url="https://10.0.0.1:6443")
    form = api.patch(f"/clusters/{cluster.pk}", {"labels": '{"a": "b\\u0000"}'}, format="multipart")
    assert form.status_code == 400
    cluster.refresh_from_db()
    assert cluster.labels == {}
