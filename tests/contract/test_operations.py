"""Every operation of the OpenAPI schema, on real objects, answers what the schema says.

The fuzzing test (``tests/api/test_schemathesis.py``) sends thousands of generated requests, but ids it makes up
rarely name an object, so most of its answers are 400s and 404s. Here each operation is called once on seeded
objects and its answer (a list page, a detail, a refusal, an unreachable cluster) must conform to the schema:
documented status and Content-Type, a body that validates. The table must name every operation, so a new endpoint
comes with its contract. The conventions hold for every operation too:

* an unknown query parameter is a 400 ``unknown_parameter`` naming it (before anything is looked up or done);
* an unknown body key is a 400 ``unknown_field`` naming it, also for actions that take no body;
* the path with a trailing slash reaches the same view;
* the object a path starts from is ``{id}``.
"""

from __future__ import annotations

import json
import re

import pytest
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.models import Run
from tests.contract.conftest import SECRET_KEY

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]

# (method, path, body, expected status) in the order they run: reads first, then changes, deletions last.
AUTOSCALING_POLICY = {"min_replicas": 1, "max_replicas": 3, "metric": "kv_cache_usage", "target": 0.8}
CALLS = [
    ("GET", "/runs", None, 200),
    ("GET", "/runs/{id}", None, 200),
    ("GET", "/clusters", None, 200),
    ("GET", "/clusters/{id}", None, 200),
    ("GET", "/clusters/{id}/events", None, 200),
    ("GET", "/clusters/{id}/nodes", None, 200),
    ("GET", "/clusters/{id}/device-info", None, 200),
    ("GET", "/clusters/{id}/health", None, 503),  # the cluster does not answer
    ("GET", "/clusters/{id}/provision", None, 404),  # registered, not provisioned
    ("GET", "/crypto/public-key", None, 200),
    ("GET", "/deployments", None, 200),
    ("GET", "/deployments/{id}", None, 200),
    ("GET", "/deployments/{id}/workers", None, 200),
    ("GET", "/deployments/{id}/workers/{worker_id}/logs", None, 502),  # the cluster does not answer
    ("GET", "/benchmarks", None, 200),
    ("GET", "/benchmarks/{id}", None, 200),
    ("GET", "/benchmarks/{id}/plots/{kind}.{fmt}", None, 404),  # nothing measured
    ("GET", "/credentials", None, 200),
    ("GET", "/credentials/{id}", None, 200),
    ("GET", "/events", None, 200),
    ("GET", "/events/{id}", None, 200),
    ("GET", "/webhooks", None, 200),
    ("GET", "/webhooks/{id}", None, 200),
    ("GET", "/webhooks/{id}/deliveries", None, 200),
    ("GET", "/audit", None, 200),
    ("GET", "/audit/{id}", None, 200),
    ("POST", "/deployments/plan", {"cluster": "c1", "model": "llama-3.1-8b-instruct"}, 200),
    ("POST", "/deployments/deploy", {"cluster": "c1", "name": "d1", "model": "llama-3.1-8b-instruct"}, 409),
    ("POST", "/deployments/{id}/rollback", {"revision": 9}, 409),
    ("GET", "/deployments/{id}/autoscaling", None, 200),
    ("PUT", "/deployments/{id}/autoscaling", AUTOSCALING_POLICY, 200),
    ("PATCH", "/deployments/{id}/autoscaling", {"max_replicas": 4}, 200),
    ("DELETE", "/deployments/{id}/autoscaling", None, 204),
    ("POST", "/runs/{id}/approve", None, 409),  # not a provisioning run
    ("POST", "/runs/{id}/cancel", {}, 409),  # already ended
    ("POST", "/clusters/register", {"name": "c1", "kubeconfig": "kind: Config"}, 400),
    ("POST", "/clusters/provision", {"name": "p1"}, 400),
    ("POST", "/clusters/{id}/provision", {}, 400),
    ("PUT", "/clusters/{id}", {"labels": {"team": "a"}}, 200),
    ("PATCH", "/clusters/{id}", {"labels": {"team": "b"}}, 200),
    ("POST", "/credentials", {"name": "aws-2", "provider": "aws", "access_key_id": "A", "secret_access_key": "s"}, 201),
    ("PATCH", "/credentials/{id}", {"access_key_id": "AKIANEWNEWNEW", "secret_access_key": "new-secret"}, 200),
    ("POST", "/deployments/{id}/benchmark", {"requests": 10}, 202),
    ("PATCH", "/deployments/{id}", {"replicas": 2}, 409),  # the benchmark run is in progress
    ("POST", "/clusters/{id}/collect-node-info", None, 202),
    ("DELETE", "/deployments/{id}", None, 202),
    ("DELETE", "/clusters/{id}", None, 409),  # it has a deployment
    ("POST", "/webhooks", {"name": "hook-2", "url": "https://hooks.example.com/in2"}, 201),
    ("PATCH", "/webhooks/{id}", {"event_types": ["io.bud.deployment.*"]}, 200),
    ("POST", "/webhooks/{id}/rotate-secret", None, 200),
    ("POST", "/webhooks/{id}/deliveries/{delivery_id}/redeliver", None, 202),
    ("DELETE", "/credentials/{id}", None, 204),
    ("DELETE", "/webhooks/{id}", None, 204),
]  # fmt: skip


def _operations(schema) -> list[tuple[str, str]]:
    return sorted((op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations()))


def _call(schema, token, seeded, method, template, *, body=None):
    """One call through schemathesis (so that its answer can be validated against the operation)."""
    operation = schema[template][method]
    case = operation.Case(
        path_parameters=seeded.path_parameters(template),
        body=body if body is not None else NOT_SET,
        media_type="application/json" if body is not None else None,
    )
    return case, case.call(headers=token)


def _send(api, method: str, path: str, body=None):
    data = json.dumps(body) if body is not None else ""
    return api.generic(method, path, data, "application/json")


def test_the_table_names_every_operation_of_the_schema(openapi):
    schema, _ = openapi
    assert sorted((m, p) for m, p, _, _ in CALLS) == _operations(schema)


def test_every_operation_answers_as_the_schema_says_on_real_objects(openapi, seeded):
    schema, token = openapi
    problems = []
    for method, template, body, expected in CALLS:
        case, response = _call(schema, token, seeded, method, template, body=body)
        if response.status_code != expected:
            problems.append(
                f"{method} {template}: {response.status_code}, expected {expected}: {response.text[:300]}"
            )
            continue
        try:
            case.validate_response(response, checks=CHECKS, headers=token)
        except FailureGroup as exc:
            reasons = "; ".join(" ".join(str(f).split())[:400] for f in exc.exceptions)
            problems.append(f"{method} {template} {response.status_code}: {reasons}")
        if response.status_code >= 400:
            answer = response.json()
            assert isinstance(answer["detail"], str) and answer["detail"] and answer["code"], (
                template,
                answer,
            )
        assert SECRET_KEY not in response.text and "new-secret" not in response.text
    assert not problems, "\n".join(problems)


def test_an_unknown_query_parameter_is_refused_by_every_operation_before_it_acts(openapi, api, seeded):
    schema, _ = openapi
    for method, template in _operations(schema):
        response = _send(api, method, seeded.path(template) + "?zz_typo=1")
        answer = response.json()
        assert response.status_code == 400, (method, template, response.status_code, answer)
        assert answer["code"] == "unknown_parameter" and list(answer["errors"]) == ["zz_typo"], (
            template,
            answer,
        )
        assert "this operation takes" in answer["errors"]["zz_typo"][0]
    # Nothing was done: no run started, nothing deleted.
    seeded.deployment.refresh_from_db()
    assert seeded.deployment.status == "running"
    assert list(Run.objects.values_list("pk", flat=True)) == [seeded.run.pk]


def test_an_unknown_body_key_is_refused_by_every_operation_that_writes(openapi, api, seeded):
    schema, _ = openapi
    writes = [(m, p) for m, p in _operations(schema) if m in ("POST", "PUT", "PATCH")]
    assert len(writes) >= 15
    for method, template in writes:
        response = _send(api, method, seeded.path(template), {"zz_typo": 1})
        answer = response.json()
        assert response.status_code == 400, (method, template, response.status_code, answer)
        assert answer["code"] == "unknown_field" and "zz_typo" in answer["errors"], (template, answer)
    assert list(Run.objects.values_list("pk", flat=True)) == [seeded.run.pk]


def test_a_nested_unknown_key_is_named_with_its_path(api, seeded):
    response = api.post(
        "/deployments/plan",
        {"cluster": "c1", "model": "llama-3.1-8b-instruct", "s3": {"bucket": "b", "buckt": "typo"}},
        format="json",
    )
    assert response.status_code == 400
    assert "s3.buckt" in response.json()["errors"]


def test_every_path_with_a_trailing_slash_reaches_the_same_view(openapi, api, seeded):
    schema, _ = openapi
    for method, template in _operations(schema):
        # The unknown parameter's 400 shows the view was reached, and nothing was done.
        response = _send(api, method, seeded.path(template) + "/?zz_typo=1")
        assert response.status_code == 400 and response.json()["code"] == "unknown_parameter", (
            template,
            response,
        )
        if method == "GET":
            bare, slashed = api.get(seeded.path(template)), api.get(seeded.path(template) + "/")
            assert slashed.status_code == bare.status_code, template
            if bare.status_code == 200 and bare["Content-Type"] == "application/json":
                assert slashed.json() == bare.json(), template
    # Django's admin keeps its own slashes.
    assert api.get("/admin/login/").status_code == 200


def test_the_object_a_path_starts_from_is_always_id(openapi):
    schema, _ = openapi
    for _, template in _operations(schema):
        names = re.findall(r"{(\w+)}", template)
        if names:
            assert names[0] == "id", template
            assert set(names) <= {"id", "worker_id", "delivery_id", "kind", "fmt"}, template
