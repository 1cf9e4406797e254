"""Fuzzing: schemathesis generates requests for every operation of the OpenAPI schema (valid and invalid ones),
sends them with an authenticated token through the WSGI application, and checks every answer against the schema:

* no answer is a 5xx;
* every answer conforms to the schema: its status is documented for the operation (``status_code_conformance``),
  its Content-Type is a documented one (``content_type_conformance``) and its body validates against the
  documented schema (``response_schema_conformance``): error answers included, which all share the ``Error``
  shape and carry one of the codes documented for that status;
* a request schemathesis made valid by the schema (positive mode) is never refused for an unknown query parameter
  or body field: what the schema documents is what the API accepts.

Hypothesis runs derandomized (the same cases on every run, so a red build is reproducible) and without
shrinking: a failure is recorded with the request that caused it, and the test goes on to the other operations.
Runs that the cases start go to an in-memory broker (no worker picks them up).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Cases per operation and generation mode: the schema has 37 operations, so 16 gives over 1,100 cases.
EXAMPLES = 16
MIN_CASES = 1000
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
# A positive (schema-valid) case refused with one of these means the schema documents something the API refuses.
UNDOCUMENTED_REFUSALS = ("unknown_parameter", "unknown_field")


def _describe(case, response) -> str:
    return (
        f"{response.status_code} {case.method} {case.formatted_path} query={case.query!r} "
        f"body={str(case.body)[:2000]!r}: {response.text[:300]}"
    )


@contextlib.contextmanager
def commits_without_flush() -> Iterator[None]:
    """This process's PostgreSQL connections commit without waiting for the WAL flush: a thousand commits of
    throwaway rows need no durability, and on a busy disk the flushes were a third of the test's time."""
    from django.db import connections

    conn = connections["default"]
    options = conn.settings_dict.setdefault("OPTIONS", {})
    saved = options.get("options")
    options["options"] = f"{saved or ''} -c synchronous_commit=off".strip()
    conn.close()  # the next query opens a connection with the option (also after CONN_MAX_AGE reopens it)
    try:
        yield
    finally:
        conn.close()
        if saved is None:
            options.pop("options", None)
        else:
            options["options"] = saved


@pytest.mark.django_db(transaction=True)
def test_schemathesis_every_answer_conforms_to_the_schema(api, settings, broker_at):
    from budcluster_site.wsgi import application

    # Every case comes from one client: throttling would answer 429 instead of exercising the operation.
    settings.API_THROTTLE_USER_RATE = ""
    settings.API_THROTTLE_ANON_RATE = ""
    settings.API_AUTH_FAILURE_LIMIT = 1_000_000
    token = {"Authorization": api._credentials["HTTP_AUTHORIZATION"]}
    failures: list[str] = []
    cases = 0
    statuses: set[int] = set()
    started = time.monotonic()
    with broker_at("memory://"), commits_without_flush():
        schema = schemathesis.openapi.from_wsgi("/schema", application, headers=token)
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis_settings(
                    max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                )  # fmt: skip
                def check(case) -> None:
                    nonlocal cases
                    cases += 1
                    response = case.call(headers=token)
                    statuses.add(response.status_code)
                    if response.status_code >= 500:
                        failures.append(f"server error: {_describe(case, response)}")
                        return
                    if mode == GenerationMode.POSITIVE and response.status_code == 400:  # noqa: B023 (called at once)
                        code = (response.json() or {}).get("code")
                        if code in UNDOCUMENTED_REFUSALS:
                            failures.append(f"documented input refused ({code}): {_describe(case, response)}")
                    try:
                        case.validate_response(response, checks=CHECKS, headers=token)
                    except FailureGroup as exc:  # one or more checks failed
                        reasons = "; ".join(str(f).splitlines()[0] for f in exc.exceptions)
                        failures.append(f"does not conform ({reasons}): {_describe(case, response)}")

                # An operation without parameters has nothing to make invalid in the negative mode.
                with contextlib.suppress(Unsatisfiable):
                    check()
    elapsed = time.monotonic() - started
    print(
        f"schemathesis: {len(operations)} operations, {cases} cases, statuses {sorted(statuses)}, "
        f"{len(failures)} failures, {elapsed:.0f} s"
    )
    assert not failures, "\n".join(failures[:20])
    assert len(operations) >= 36
    assert cases >= MIN_CASES
