"""Fuzzing: schemathesis generates requests for every operation of the OpenAPI schema (valid and invalid ones),
sends them with an authenticated token through the WSGI application, and no answer may be a 5xx.

Hypothesis runs derandomized (the same cases on every run, so a red build is reproducible) and without
shrinking: a 5xx is recorded with the request that caused it, and the test goes on to the other operations. Runs
that the cases start go to an in-memory broker (no worker picks them up).
"""

from __future__ import annotations

import contextlib
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# Cases per operation and generation mode: the schema has 36 operations, so 16 gives over 1,100 cases.
EXAMPLES = 16
MIN_CASES = 1000


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_server_error_in_any_operation(api, settings, broker_at):
    from budcluster_site.wsgi import application

    # Every case comes from one client: throttling would answer 429 instead of exercising the operation.
    settings.API_THROTTLE_USER_RATE = ""
    settings.API_THROTTLE_ANON_RATE = ""
    settings.API_AUTH_FAILURE_LIMIT = 1_000_000
    token = {"Authorization": api._credentials["HTTP_AUTHORIZATION"]}
    failures: list[str] = []
    cases = 0
    started = time.monotonic()
    with broker_at("memory://"):
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
                    if response.status_code >= 500:
                        failures.append(
                            f"{response.status_code} {case.method} {case.formatted_path} "
                            f"query={case.query!r} body={str(case.body)[:300]!r}: {response.text[:300]}"
                        )

                # An operation without parameters has nothing to make invalid in the negative mode.
                with contextlib.suppress(Unsatisfiable):
                    check()
    elapsed = time.monotonic() - started
    print(
        f"schemathesis: {len(operations)} operations, {cases} cases, {len(failures)} server errors, {elapsed:.0f} s"
    )
    assert not failures, "\n".join(failures[:20])
    assert len(operations) >= 30
    assert cases >= MIN_CASES
