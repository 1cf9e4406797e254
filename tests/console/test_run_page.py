"""A run's page follows the run live (issue "The operators' console and the API contract", item 12).

Read as an operator reads it: the live section (``#run-live``) shows the status, a progress bar, the steps with
their durations, timestamps to the second and an ETA; while the run is active it names a fragment URL that the
page's same-origin script fetches every two seconds, and the fragment answers the run as it is now; once the run
has ended the fragment says it is the last one and the page no longer asks for a refresh. The ETA is never in the
past while a step takes longer than estimated (a waiting step writes nothing between its checks). Cancel is a
POST with the CSRF token and the API's permission, which stops a run on a real worker. The page and the fragment
cost the same number of queries for a run of three steps or thirty.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.html import parse_html
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core import workflow
from core.choices import RunStatus, StepStatus
from core.models import Run, RunEvent, RunStep
from tests.console.html import attr as _attr
from tests.console.html import find as _find
from tests.console.html import one as _one
from tests.console.html import text as _text
from tests.worker import run_finished, wait_for

pytestmark = pytest.mark.django_db

SECONDS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


# --- reading the page ------------------------------------------------------------------------------------------


def _get(client, url: str):
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return parse_html(response.content.decode())


def _page(client, run: Run):
    return _get(client, f"/admin/core/run/{run.pk}/change/")


def _live(client, run: Run):
    return _get(client, f"/admin/core/run/{run.pk}/live/")


def _eta(root) -> datetime:
    return datetime.fromisoformat(_attr(_one(root, id="run-eta"), "data-eta"))


# --- a run as the engine leaves it mid-way ---------------------------------------------------------------------


def _run(*, steps: int = 3, waiting: bool = True, events: int = 3) -> Run:
    """A deploy run 42 % through: its first step done in 2.5 s, the next one waiting for pods (started 20 s ago,
    estimated 5 s, next check in 20 s), then ``steps - 2`` steps of 1 s each to go and a cleanup step. The stored
    ETA is a minute old: what a waiting step leaves between two checks once it outlasts its estimate."""
    now = timezone.now()
    run = Run.objects.create(
        kind="deployment.deploy", title="Deploy llama", status=RunStatus.RUNNING, progress=42.4,
        created_at=now - timedelta(seconds=31), started_at=now - timedelta(seconds=30),
        heartbeat_at=now - timedelta(seconds=1), eta=now - timedelta(seconds=60),
        wake_at=now + timedelta(seconds=20),
    )  # fmt: skip
    RunStep.objects.create(
        run=run, order=0, name="verify", title="Verify the cluster", status=StepStatus.SUCCEEDED, progress=1,
        eta_seconds=2, started_at=now - timedelta(seconds=30), finished_at=now - timedelta(seconds=27.5),
        message="done",
    )  # fmt: skip
    RunStep.objects.create(
        run=run, order=1, name="wait_ready", title="Wait for the runtime to be ready", progress=0.4,
        status=StepStatus.WAITING if waiting else StepStatus.RUNNING, eta_seconds=5,
        started_at=now - timedelta(seconds=20), message="2 of 3 pods ready",
    )  # fmt: skip
    for order in range(2, steps):
        RunStep.objects.create(
            run=run, order=order, name=f"later{order}", title=f"Later {order}", eta_seconds=1
        )
    RunStep.objects.create(
        run=run, order=steps, name="undo", title="Clean up", phase="cleanup", eta_seconds=30
    )  # fmt: skip
    for n in range(events):
        RunEvent.objects.create(run=run, step="verify", status="running", message=f"event {n}")
    return run


@pytest.fixture
def operator(client, make_user):
    client.force_login(make_user("operator", "core.view_run", "core.cancel_run"))
    return client


# --- the live section ------------------------------------------------------------------------------------------


def test_an_active_run_shows_where_it_stands_and_refreshes_itself(operator):
    run = _run()
    page = _page(operator, run)

    live = _one(page, id="run-live")
    assert _attr(live, "data-refresh-url") == f"/admin/core/run/{run.pk}/live/"
    assert _attr(live, "data-refresh-seconds") == "2"
    assert _text(_one(live, id="run-status")) == "running"
    assert _attr(_one(live, id="run-progress", tag="progress"), "value") == "42"
    assert SECONDS.search(_text(_one(live, tag="td", **{"class": "run-started"})))

    steps = {_attr(row, "data-step"): row for row in _find(live, tag="tr", **{"class": "step step-main"})}
    assert list(steps) == ["verify", "wait_ready", "later2"]
    duration = {name: _text(_one(row, tag="td", **{"class": "duration"})) for name, row in steps.items()}
    assert duration["verify"] == "2.5 s"
    assert re.fullmatch(r"2\d s so far", duration["wait_ready"]), duration  # 20 s and counting
    assert duration["later2"] == "-"
    assert "2 of 3 pods ready" in _text(steps["wait_ready"])
    assert re.search(r"\d\d:\d\d:\d\d", _text(steps["verify"]))  # started and finished to the second

    # The page's script is a same-origin file (the CSP allows no inline script) that reads data-refresh-url.
    scripts = [_attr(s, "src") for s in _find(page, tag="script")]
    assert all(scripts) and any(src.endswith("core/js/refresh.js") for src in scripts)


def test_the_eta_of_a_waiting_step_that_outlasted_its_estimate_is_not_in_the_past(operator):
    run = _run()
    live = _live(operator, run)
    # It cannot end before the step's next check, plus the one step of 1 s still ahead (cleanup is not run).
    assert _eta(live) == run.wake_at + timedelta(seconds=1)
    assert "Wait for the runtime to be ready is taking longer than its estimate" in _text(
        _one(live, id="run-eta")
    )


def test_the_eta_of_a_running_step_past_its_estimate_is_not_in_the_past(operator):
    run = _run(waiting=False)
    before = timezone.now()
    assert _eta(_live(operator, run)) >= before + timedelta(seconds=1)


def test_the_eta_of_a_run_no_worker_took_counts_every_step(operator):
    now = timezone.now()
    run = Run.objects.create(kind="demo.chain", title="Demo", eta=now - timedelta(minutes=5))
    for order, eta in enumerate((1, 1, 2)):
        RunStep.objects.create(run=run, order=order, name=f"s{order}", title=f"Step {order}", eta_seconds=eta)
    live = _live(operator, run)
    assert _text(_one(live, id="run-status")) == "pending"
    assert _eta(live) >= now + timedelta(seconds=4)
    assert "no worker has started the run yet" in _text(_one(live, id="run-eta"))


def test_a_stored_eta_still_ahead_is_shown_as_it_is(operator):
    run = _run()
    ahead = timezone.now() + timedelta(minutes=10)
    Run.objects.filter(pk=run.pk).update(eta=ahead)
    live = _live(operator, run)
    assert _eta(live) == ahead
    assert "taking longer" not in _text(_one(live, id="run-eta"))


def test_the_fragment_answers_the_run_as_it_is_and_its_last_answer_stops_the_refresh(operator):
    run = _run()
    url = _attr(_one(_page(operator, run), id="run-live"), "data-refresh-url")
    live = parse_html(operator.get(url).content.decode())
    assert not _find(live, data_refresh_final="succeeded")

    now = timezone.now()
    RunStep.objects.filter(run=run, phase="main").update(
        status=StepStatus.SUCCEEDED, progress=1, finished_at=now
    )
    RunStep.objects.filter(run=run, phase="cleanup").update(status=StepStatus.SKIPPED)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, progress=100, finished_at=now)

    response = operator.get(url)
    assert "no-store" in response["Cache-Control"]  # never an old answer from a cache
    live = parse_html(response.content.decode())
    assert _text(_one(live, id="run-status")) == "succeeded"
    assert _attr(_one(live, id="run-progress"), "value") == "100"
    assert _find(live, data_refresh_final="succeeded"), "the script would go on fetching"
    assert not _find(live, id="run-cancel") and not _find(live, id="run-eta")
    assert re.fullmatch(r"\d+ s", _text(_one(live, id="run-elapsed")))

    # Opened now, the page asks for no refresh at all.
    assert _attr(_one(_page(operator, run), id="run-live"), "data-refresh-url") is None


def test_the_refresh_script_stops_on_a_final_fragment(client):
    """The script the page loads honours data-refresh-final (the browser tests watch it work)."""
    served = client.get("/static/core/js/refresh.js")
    script = b"".join(served.streaming_content).decode()
    assert (
        'querySelector("[data-refresh-final]")' in script and 'removeAttribute("data-refresh-url")' in script
    )


def test_a_failed_run_shows_its_error(operator):
    run = Run.objects.create(
        kind="cluster.register", title="Register prod", status=RunStatus.FAILED, finished_at=timezone.now(),
        error="verify: the API server refused the credentials (401)",
    )  # fmt: skip
    live = _one(_page(operator, run), id="run-live")
    assert _text(_one(live, id="run-status")) == "failed"
    assert _text(_one(live, id="run-error")) == "verify: the API server refused the credentials (401)"


# --- permissions -----------------------------------------------------------------------------------------------


def test_the_live_section_needs_the_view_permission(client, make_user):
    run = _run()
    client.force_login(make_user("viewer", "clusters.view_cluster"))
    assert client.get(f"/admin/core/run/{run.pk}/live/").status_code == 403
    client.logout()
    assert client.get(f"/admin/core/run/{run.pk}/live/").status_code == 302  # to the login page
    client.force_login(make_user("reader", "core.view_run"))
    assert client.get("/admin/core/run/00000000-0000-0000-0000-000000000000/live/").status_code == 404


def test_cancel_is_offered_and_allowed_only_with_the_cancel_permission(client, make_user):
    run = _run()
    client.force_login(make_user("reader", "core.view_run"))
    assert not _find(_page(client, run), id="run-cancel")
    assert client.post(f"/admin/core/run/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert not run.cancel_requested and run.status == RunStatus.RUNNING


def test_cancel_is_a_post_with_the_csrf_token(make_user):
    run = _run()
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(make_user("operator", "core.view_run", "core.cancel_run"))
    url = f"/admin/core/run/{run.pk}/cancel/"
    assert browser.get(url).status_code == 405
    assert browser.post(url).status_code == 403  # no token
    run.refresh_from_db()
    assert not run.cancel_requested

    form = next(f for f in _find(_page(browser, run), tag="form") if _find(f, id="run-cancel"))
    assert (_attr(form, "method"), _attr(form, "action")) == ("post", url)
    token = _attr(_one(form, tag="input", name="csrfmiddlewaretoken"), "value")
    response = browser.post(url, {"csrfmiddlewaretoken": token, "_cancel": "1"})
    assert response.status_code == 302 and response["Location"] == f"/admin/core/run/{run.pk}/change/"
    run.refresh_from_db()
    assert run.cancel_requested
    # The waiting step is cancelled at once and the run cleans up; the page says so and offers no second cancel.
    live = _one(_page(browser, run), id="run-live")
    assert _text(_one(live, id="run-status")) == "cleaning_up"
    assert not _find(live, id="run-cancel")


def test_cancelling_a_run_that_ended_says_so(operator):
    run = Run.objects.create(kind="demo.chain", title="Demo", status=RunStatus.SUCCEEDED)
    response = operator.post(f"/admin/core/run/{run.pk}/cancel/", follow=True)
    assert "Run already succeeded; nothing to cancel." in response.content.decode()
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED


# --- cost ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["change", "live"])
def test_the_query_count_does_not_grow_with_the_run(operator, django_assert_max_num_queries, view):
    small, large = _run(steps=3, events=3), _run(steps=30, events=200)
    with CaptureQueriesContext(connection) as queries:
        assert operator.get(f"/admin/core/run/{small.pk}/{view}/").status_code == 200
    with django_assert_max_num_queries(len(queries)):
        assert operator.get(f"/admin/core/run/{large.pk}/{view}/").status_code == 200


# --- a run on a real worker ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_page_follows_a_real_run_to_its_end(worker, operator, tmp_path: Path):
    flag = tmp_path / "ready.flag"
    run = workflow.get_workflow("demo.wait").launch(params={"path": str(flag), "timeout": 30})
    url = _attr(_one(_page(operator, run), id="run-live"), "data-refresh-url")

    def waiting():
        live = parse_html(operator.get(url).content.decode())
        rows = _find(live, tag="tr", data_step="wait_file")
        return live if rows and _attr(rows[0], "data-status") == "waiting" else None

    live = wait_for(waiting, what="the fragment to show the step waiting")
    assert _text(_one(live, id="run-status")) == "running"
    assert not _find(live, data_refresh_final="running")
    assert _eta(live) >= timezone.now().replace(microsecond=0) - timedelta(seconds=1)

    flag.write_text("go")
    assert run_finished(run.pk, 30).status == RunStatus.SUCCEEDED
    live = _live(operator, run)
    assert _text(_one(live, id="run-status")) == "succeeded"
    assert _find(live, data_refresh_final="succeeded")
    assert _attr(_one(live, tag="tr", data_step="wait_file"), "data-status") == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_the_cancel_button_stops_a_real_run(worker, make_user, tmp_path: Path):
    run = workflow.get_workflow("demo.wait").launch(params={"path": str(tmp_path / "never"), "timeout": 60})
    wait_for(lambda: run.steps.filter(name="wait_file", status=StepStatus.WAITING).exists(), what="waiting")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(make_user("operator", "core.view_run", "core.cancel_run"))
    form = next(f for f in _find(_page(browser, run), tag="form") if _find(f, id="run-cancel"))
    token = _attr(_one(form, tag="input", name="csrfmiddlewaretoken"), "value")
    assert browser.post(_attr(form, "action"), {"csrfmiddlewaretoken": token}).status_code == 302

    assert run_finished(run.pk, 15).status == RunStatus.CANCELLED
    live = _live(browser, run)
    assert _text(_one(live, id="run-status")) == "cancelled"
    assert _find(live, data_refresh_final="cancelled") and not _find(live, id="run-cancel")
    steps = {
        _attr(r, "data-step"): _attr(r, "data-status") for r in _find(live, tag="tr") if _attr(r, "data-step")
    }
    assert steps == {"wait_file": "cancelled", "after": "skipped", "undo": "succeeded"}
    assert "cancelled by operator from the console" in _text(_one(live, id="run-events"))
