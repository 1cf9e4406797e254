"""LOG_FORMAT=json: every line a JSON object naming its request and its run (core/logformat.py).

The web side is checked in-process (the middleware and the formatter, as settings wire them); the worker side
on a real worker subprocess started with LOG_FORMAT=json, whose whole output must parse line by line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from core import logformat
from tests.worker import ROOT, wait_for, worker_queues
from tests.worker import test_database_url as database_url


@pytest.fixture
def json_lines():
    """The lines django.request writes, through the handler settings build for LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logformat.JsonFormatter())
    handler.addFilter(logformat.ContextFilter())
    log = logging.getLogger("django.request")
    log.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        log.removeHandler(handler)


@pytest.mark.django_db
def test_a_request_line_carries_the_request_id_the_response_returns(client, json_lines):
    response = client.get("/no-such-path", HTTP_X_REQUEST_ID="ingress-1234abcd")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "ingress-1234abcd"
    (line,) = json_lines()
    assert line["request_id"] == "ingress-1234abcd"
    assert line["run_id"] is None
    assert line["level"] == "WARNING" and line["logger"] == "django.request"
    assert "/no-such-path" in line["message"]
    assert line["time"].endswith("Z")


@pytest.mark.django_db
@pytest.mark.parametrize("given", [None, "short", 'evil"\n{"level":"CRITICAL"}', "x" * 65])
def test_a_missing_or_unsafe_request_id_is_replaced(client, json_lines, given):
    headers = {} if given is None else {"HTTP_X_REQUEST_ID": given}
    response = client.get("/no-such-path", **headers)
    made = response["X-Request-ID"]
    assert made != given and len(made) == 32 and made.isalnum()
    assert [line["request_id"] for line in json_lines()] == [made]


def test_tracebacks_and_newlines_stay_on_one_line():
    # Outside any request or task (an earlier test's WSGI call may have left its id set in this thread).
    logformat.request_id.set(None)
    logformat.run_id.set(None)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "two\nlines", (), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    text = logformat.JsonFormatter().format(record)
    assert "\n" not in text
    parsed = json.loads(text)
    assert parsed["message"] == "two\nlines"
    assert "ValueError: boom" in parsed["exc"]
    assert parsed["request_id"] is None and parsed["run_id"] is None


def test_worker_lines_are_json_and_a_run_s_lines_name_it_and_its_request(
    transactional_db, tmp_path, celery_worker_process
):
    """The worker as the image starts it (scripts/entrypoint.sh worker) with LOG_FORMAT=json: every line of its
    output, start-up and shutdown included, is a JSON object; the lines of a run's steps carry its id and the id
    of the request that started it. It is the only consumer meanwhile (the session's worker is stopped), so the
    run's steps are in its output."""
    from core import workflow
    from core.models import Run

    celery_worker_process.stop()

    # This process publishes the run's messages: the request id travels in their headers.
    logformat.install()
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "2",
    }
    name = f"json{os.getpid()}@%h"
    queues = ",".join(worker_queues())
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "scripts" / "entrypoint.sh"), "worker", "-n", name, "-Q", queues, "--without-mingle",
             "--without-gossip"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(
            lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None,
            timeout=60,
            what="the worker to start",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        token = logformat.request_id.set("req-from-the-api-0001")
        try:
            run = workflow.get_workflow("demo.chain").launch(params={})
        finally:
            logformat.request_id.reset(token)
        wait_for(
            lambda: Run.objects.get(pk=run.pk).status == "succeeded", timeout=60, what="the run to succeed"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        celery_worker_process.start()
    parsed = []
    for line in log_path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message", "request_id", "run_id"} <= set(p) for p in parsed)
    of_run = [p for p in parsed if p["run_id"] == str(run.pk)]
    assert of_run, [p["message"] for p in parsed]
    assert {p["request_id"] for p in of_run} == {"req-from-the-api-0001"}
    # Lines outside any task name no run.
    assert any(p["run_id"] is None and "ready." in p["message"] for p in parsed)
