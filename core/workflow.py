"""The workflow engine: every long operation of BudCluster is a declared list of steps run by Celery.

Design (after pulpcore's tasking and AWX's job events):

* A ``Workflow`` is declared in code (``<app>/workflows.py``) as ordered ``Step``\\ s plus compensating
  ``cleanup`` steps. ``Workflow.launch()`` writes a ``Run`` with one ``RunStep`` row per step and, once the
  transaction commits, sends a Celery **chain** of ``core.execute_step(run_id, step_name)`` messages.
* The database is the truth; a message only says "look at this step now". On entry a step task claims its row
  with a compare-and-set UPDATE (pending/waiting → running, attempt + 1). A message for a step that is done, or that
  another live worker is running, is a no-op that also drops the rest of its chain (the owner carries the chain on).
  Hence redelivery (``acks_late`` + ``task_reject_on_worker_lost``) is safe and each step body runs once.
* Poll steps (``Step(poll=Poll(...))``) never sleep in a worker: the body checks once and returns ``NotYet``; the
  engine marks the step WAITING and re-sends the step's message with a countdown (carrying the rest of the chain)
  until the step's deadline, when it fails with a clear message.
* Inline continuation: when a step succeeds, the same task goes on with the run's next step (popped off the
  chain, claimed and recorded like any other) until ``WORKFLOW_INLINE_SECONDS`` of the message have passed, so
  a run of short steps does not queue behind every other run once per step.
* Fan-out steps (``Step(each=...)``) replace themselves by a **chord**: one ``execute_fanout_item`` per item in
  parallel, joined by ``join_fanout`` which finishes the step; the chain then goes on.
* Cancel is cooperative: ``request_cancel()`` sets ``Run.cancel_requested``; a step boundary (or a body calling
  ``ctx.check_cancel()``) stops there. A waiting step is cancelled at once; a run no worker has started yet goes
  straight to its cleanup. Failure and cancel always run the cleanup steps (best effort, each recorded) before
  the run ends FAILED or CANCELLED, so the subject leaves its in-between state (deleting, registering, ...).
* Transient failures (``TransientError``: the cluster unreachable, a 5xx, a timeout) are retried with capped
  exponential backoff for ``WORKFLOW_TRANSIENT_WINDOW`` seconds from the step's first failure, then fail.
* Liveness: while a body runs, a heartbeat thread stamps the step and the run every
  ``WORKFLOW_HEARTBEAT_INTERVAL`` seconds. ``reap_stale_runs`` (beat, every 5 s) finds active runs silent for
  ``WORKFLOW_STALE_AFTER`` seconds (a worker killed mid-step, a lost message) and re-sends the chain from the first
  unfinished step; the stale step is taken over (attempt + 1). With the defaults (5 s, 20 s, 5 s) a dead
  worker's run resumes 20-25 s after its last heartbeat, while a live step would have to miss three heartbeats
  in a row (a database outage of 15 s) before it looked dead.
* A run carried out by a command in its own process (``start_in_process`` / ``carry_out_in_process``: ``manage.py
  benchmark``) names that process in its params; when it goes silent the reaper closes the run (FAILED, naming the
  process; cleanup on a worker) instead of resuming it on a worker. See the last section.
* Failpoints (``WORKFLOW_FAILPOINTS``, tests only) pause or kill a worker at a named step; see below.
* Every transition appends a ``RunEvent``; run progress (percent) and ETA are derived from the steps' estimated
  durations and recomputed on each transition.
* Cost: on PostgreSQL the two transitions of a step run in a row (claim, finish) are one statement each, a
  data-modifying CTE that writes the compare-and-set, the events and the run's progress and commits on its own
  (see "one statement per transition"); the rest go through the ORM in a transaction each.

Step bodies must be idempotent (create-or-get, apply): after a worker dies mid-step, the body runs again.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.exceptions import TaskPredicate
from django.apps import apps
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q, TextChoices
from django.utils import timezone

from . import events, outages
from .choices import RunStatus, StepPhase, StepStatus
from .errors import Refused
from .models import Run, RunEvent, RunStep, recorded_user

if TYPE_CHECKING:
    from celery import Task
    from django.db.models import Model

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, Workflow] = {}


# --- declarations -------------------------------------------------------------------------------------------------


class StepFailed(Exception):
    """Raise from a step body to fail the step with a message an operator can act on."""


class TransientError(Exception):
    """Raise from a step body for a failure that passes by itself (the API server unreachable, a 5xx, a timeout).

    The step is retried with capped exponential backoff (``Step.retry_delay`` doubling up to
    ``WORKFLOW_RETRY_MAX_DELAY``) until ``WORKFLOW_TRANSIENT_WINDOW`` seconds (or ``Step.transient_window``) have
    passed since its first transient failure; then it fails. A permanent error (refused credentials, a forbidden
    or invalid request) is a ``StepFailed`` and fails at once."""


class Cancelled(Exception):
    """Raised by ``StepContext.check_cancel()`` when the run has been asked to stop."""


@dataclass(frozen=True)
class NotYet:
    """Returned by a poll step's body: not done yet; check again after the poll interval."""

    message: str = ""
    progress: float | None = None
    # Seconds until the next check instead of the poll's interval: a check that found the cluster not answering
    # backs off, so a hung cluster's checks take a small share of the poll workers.
    after: float | None = None


Number = float | int
DurationSpec = Number | Callable[["StepContext"], Number]


@dataclass(frozen=True)
class Poll:
    """A waiting step: re-checked every ``interval`` seconds; fails after ``timeout`` seconds (both may be
    callables of the context, e.g. a transfer timeout scaled by model size)."""

    interval: DurationSpec = 5.0
    timeout: DurationSpec = 600.0
    what: str = "the condition"


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    func: Callable[[StepContext], Any]
    eta: float | Callable[[dict], float] = 5.0
    poll: Poll | None = None
    each: Callable[[StepContext, Any], Any] | None = None
    join: Callable[[StepContext, list], Any] | None = None
    # Transient failures: first delay (None: WORKFLOW_RETRY_DELAY) and the window after the first failure during
    # which the step keeps being retried (None: WORKFLOW_TRANSIENT_WINDOW).
    retry_delay: float | None = None
    transient_window: float | None = None


@dataclass
class Workflow:
    kind: str
    title: str
    steps: list[Step]
    cleanup: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in [*self.steps, *self.cleanup]]
        if len(names) != len(set(names)):
            raise ValueError(f"workflow {self.kind}: step names must be unique: {names}")
        if not self.steps:
            raise ValueError(f"workflow {self.kind}: no steps")
        if self.kind in _REGISTRY and _REGISTRY[self.kind].steps != self.steps:
            raise ValueError(f"workflow {self.kind} declared twice")
        _REGISTRY[self.kind] = self

    def step(self, name: str) -> Step:
        for step in (*self.steps, *self.cleanup):
            if step.name == name:
                return step
        raise KeyError(f"workflow {self.kind} has no step {name!r}")

    def launch(
        self,
        *,
        subject: Model | None = None,
        params: dict | None = None,
        user: Any = None,
        title: str | None = None,
    ) -> Run:
        """Create the run and its steps; the first message goes out when the surrounding transaction commits."""
        from django.contrib.contenttypes.models import ContentType

        params = dict(params or {})
        key, creator = _IDEMPOTENCY_KEY.get(), recorded_user(user)
        if key and creator is not None:
            _IDEMPOTENCY_KEY.set("")  # one request starts one run: the key goes to the first launched
        else:
            key = ""
        # A run whose first message cannot be sent would sit in PENDING until the reaper; refuse instead while
        # the broker is down (503 broker_unavailable): the caller's transaction rolls back, nothing is stored.
        outages.require_broker()
        steps = [(StepPhase.MAIN, s) for s in self.steps] + [(StepPhase.CLEANUP, s) for s in self.cleanup]
        etas = [step.eta(params) if callable(step.eta) else step.eta for _, step in steps]
        total = sum(eta for (phase, _), eta in zip(steps, etas, strict=True) if phase == StepPhase.MAIN)
        with transaction.atomic():
            run = Run.objects.create(
                kind=self.kind,
                title=title or self.title,
                subject_type=ContentType.objects.get_for_model(subject) if subject is not None else None,
                subject_id=str(subject.pk) if subject is not None else "",
                params=params,
                created_by=creator,
                idempotency_key=key,
                eta=timezone.now() + timedelta(seconds=total),
            )
            _remember_run(run)
            RunStep.objects.bulk_create(
                RunStep(run=run, order=order, name=step.name, title=step.title, phase=phase, eta_seconds=eta)
                for order, ((phase, step), eta) in enumerate(zip(steps, etas, strict=True))
            )
            _event(run.pk, "", RunStatus.PENDING, f"{run.title}: queued")
            names = [s.name for s in self.steps]

            def send_first() -> None:
                # The broker failed after the check above: the run is committed, so keep it PENDING and let the
                # reaper send it when the broker is back, and let the caller answer 202 for a run that will
                # happen (an error here would tell the client to retry a start that was stored). Any error: a
                # commit hook that raises turns the committed start into a 500. Logged by class only: a broker
                # client's message may quote its URL, password included.
                try:
                    send_chain(run.pk, names, self.kind)
                except Exception as exc:
                    logger.warning(
                        "run %s (%s) stays pending until the broker answers again; the reaper sends it (%s)",
                        run.pk, self.kind, type(exc).__name__,
                    )  # fmt: skip

            transaction.on_commit(send_first)
        run.refresh_from_db()
        return run


# The Idempotency-Key of the API request being served (``core.api.idempotency.start_once``): the run it launches
# stores the key, so a retry of the request finds that run instead of starting another.
_IDEMPOTENCY_KEY: ContextVar[str] = ContextVar("workflow_idempotency_key", default="")


@contextmanager
def idempotency_key(key: str) -> Iterator[None]:
    """Inside the block, the first run launched for an authenticated user records ``key`` (unique per user and
    kind: a second launch with the same key raises ``IntegrityError``)."""
    token = _IDEMPOTENCY_KEY.set(key)
    try:
        yield
    finally:
        _IDEMPOTENCY_KEY.reset(token)


def get_workflow(kind: str) -> Workflow:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"no workflow named {kind!r} is declared (is its module imported?)") from None


def autodiscover() -> None:
    """Import ``<app>.workflows`` of every installed app, then ``WORKFLOW_MODULES`` (workflows composed from
    several apps' steps) and ``WORKFLOW_EXTRA_MODULES``."""
    for config in apps.get_app_configs():
        try:
            importlib.import_module(f"{config.name}.workflows")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.workflows":
                raise
    for module in [
        *getattr(settings, "WORKFLOW_MODULES", []),
        *getattr(settings, "WORKFLOW_EXTRA_MODULES", []),
    ]:
        importlib.import_module(module)


def step_task(kind: str, step_name: str) -> Task:
    """The task that carries a step's message: ``core.check_step`` for a poll step (routed to
    ``WORKFLOW_POLL_QUEUE`` by ``CELERY_TASK_ROUTES``), ``core.execute_step`` for any other.

    Poll checks are many, short and mostly talk to clusters; on a pool of their own a cluster that stops answering
    holds poll workers for ``WORKFLOW_POLL_CHECK_DEADLINE`` at most and never the workers that carry other runs'
    steps (installs, registrations), which a hung cluster's checks used to fill."""
    from .tasks import check_step, execute_step

    try:
        poll = get_workflow(kind).step(step_name).poll is not None
    except KeyError:
        poll = False
    return check_step if poll else execute_step


def send_chain(run_id: Any, step_names: Iterable[str], kind: str | None = None) -> None:
    from celery import chain

    names = list(step_names)
    if not names:
        return
    if kind is None:
        kind = Run.objects.values_list("kind", flat=True).get(pk=run_id)
    chain(*[step_task(kind, name).si(str(run_id), name) for name in names]).apply_async()


# --- context passed to step bodies ----------------------------------------------------------------------------------


class StepContext:
    """What a step body sees: its run, params, earlier outputs, and ways to report progress."""

    _THROTTLE = 1.0

    def __init__(self, run: Run, step: RunStep) -> None:
        self.run = run
        self.step = step
        self.params: dict = run.params
        self._outputs: dict | None = None
        self._last_progress = 0.0
        self._last_cancel_check = 0.0

    @property
    def outputs(self) -> dict[str, Any]:
        """Outputs of the run's finished steps, by step name."""
        if self._outputs is None:
            self._outputs = dict(
                RunStep.objects.filter(run_id=self.run.pk, status=StepStatus.SUCCEEDED).values_list(
                    "name", "output"
                )
            )
        return self._outputs

    @property
    def subject(self) -> Any:
        return self.run.subject

    def progress(self, fraction: float, message: str | None = None, *, force: bool = False) -> None:
        """Report progress within the step (0-1); writes at most once a second unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last_progress < self._THROTTLE:
            return
        self._last_progress = now
        fields: dict[str, Any] = {"progress": max(0.0, min(1.0, fraction)), "heartbeat_at": timezone.now()}
        if message is not None:
            fields["message"] = message
        RunStep.objects.filter(pk=self.step.pk).update(**fields)
        self.step.progress = fields["progress"]
        if self.step.phase == StepPhase.MAIN:
            _refresh_run_progress(self.run.pk, self.step.order, self.step.progress)

    def event(self, message: str, **data: Any) -> None:
        _event(self.run.pk, self.step.name, self.step.status, message, data)

    def failpoint(self, point: str) -> None:
        """A named spot inside the body where ``WORKFLOW_FAILPOINTS`` may pause or kill the worker
        (``[kind/]step.point:pause|crash``), for a test to stop a step between two of its own effects."""
        _failpoint(self.run, self.step, "inside", point)

    def check_cancel(self) -> None:
        """Raise ``Cancelled`` if the run was asked to stop (reads the flag at most once a second)."""
        now = time.monotonic()
        if now - self._last_cancel_check < self._THROTTLE:
            return
        self._last_cancel_check = now
        if Run.objects.filter(pk=self.run.pk, cancel_requested=True).exists():
            raise Cancelled("cancel requested")


# --- helpers --------------------------------------------------------------------------------------------------------


def _event(run_id: Any, step: str, status: str, message: str, data: dict | None = None) -> None:
    kind = _outbox_type(step, str(status))
    if kind is None:
        RunEvent.objects.create(
            run_id=run_id, step=step, status=str(status), message=message[:4000], data=data or {}
        )
        return
    payload = {**_run_meta(run_id), "status": str(status), "step": step, "message": message[:4000]}
    if _one_statement():
        # The log row and the outbox row in one statement: one round trip, atomic without a transaction block.
        outbox, outbox_params = events.insert_sql(kind, f"runs/{run_id}", payload)
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH logged AS ({_RUNEVENT_INSERT} VALUES (%s, %s, %s, %s, %s, %s)) {outbox}",
                [*_runevent_params(run_id, step, str(status), message, data), *outbox_params],
            )
        events.wake_on_commit()
        return
    # Callers write the transition in the same transaction; one that did not gets one here for the two rows.
    with nullcontext() if connection.in_atomic_block else transaction.atomic():
        RunEvent.objects.create(
            run_id=run_id, step=step, status=str(status), message=message[:4000], data=data or {}
        )
        events.emit(kind, f"runs/{run_id}", payload)


# What the outbox (core.events) hears of a run: its own transitions, and each step that ended as progress. Step
# starts, waits and failpoints stay in the run's own event log.
_RUN_EVENT_TYPES = {
    RunStatus.PENDING: "run.queued",
    RunStatus.RUNNING: "run.started",
    RunStatus.CLEANING_UP: "run.cleaning_up",
    RunStatus.SUCCEEDED: "run.succeeded",
    RunStatus.FAILED: "run.failed",
    RunStatus.CANCELLED: "run.cancelled",
    "cancel_requested": "run.cancel_requested",
}
_STEP_ENDS = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED})


def _outbox_type(step: str, status: str) -> str | None:
    if not step:
        return _RUN_EVENT_TYPES.get(status)
    return "run.progress" if status in _STEP_ENDS else None


# --- one statement per transition (PostgreSQL) ---------------------------------------------------------------------
# A run of short steps spends its time in round trips to the database, not in its bodies: a step's two transitions
# (claim, finish) took BEGIN, four or five statements and COMMIT each. On PostgreSQL the hot ones are written as one
# statement each, a data-modifying CTE: the compare-and-set UPDATE, then the RunEvent row, the outbox row and the
# run's progress, each ``SELECT ... FROM`` the rows the UPDATE changed, so they are written exactly when the
# compare-and-set won. A single statement in autocommit mode is its own transaction: still one commit per
# transition, all or nothing, with no BEGIN/COMMIT round trips. The first step of a pending run is one statement
# too (its claim, the run's start and both log rows: ``_claim_first``), after the read that every message's first
# step makes. Anything unusual (a resume, a cancel, a poll's first check, a failure, SQLite) takes the ORM path
# below, which writes the same rows. A run's last step ends in one transaction with the run's own end.


def _one_statement() -> bool:
    return connection.vendor == "postgresql"


# ``WORKFLOW_WAIT_FOR_FLUSH = False`` (opt-in): these statements commit without waiting for PostgreSQL to flush the
# commit to disk (``synchronous_commit = off`` for that transaction only, set by the statement itself). A worker
# killed at any point loses nothing (the commit is visible at once); only a crash of the database server itself
# can lose the last ~0.6 s (3 x ``wal_writer_delay``) of step transitions, which the engine then repeats (steps are
# idempotent; the reaper resumes the run), their events vanishing with them. The flush is most of a step's cost.
_NO_FLUSH_CTE = "no_flush AS (SELECT set_config('synchronous_commit', 'off', true) AS v), "
_NO_FLUSH_WHERE = " WHERE (SELECT v FROM no_flush) IS NOT NULL"


def _no_flush() -> tuple[str, str]:
    """(CTE, final WHERE) that relax the statement's commit, or ("", "") with the default durable commit."""
    if getattr(settings, "WORKFLOW_WAIT_FOR_FLUSH", True):
        return "", ""
    return _NO_FLUSH_CTE, _NO_FLUSH_WHERE


_q = connection.ops.quote_name
_RUNEVENT_INSERT = (
    f"INSERT INTO {RunEvent._meta.db_table} "
    f"({', '.join(_q(c) for c in ('run_id', 'step', 'status', 'message', 'data', 'created_at'))})"
)


def _runevent_params(run_id: Any, step: str, status: str, message: str, data: dict | None) -> list[Any]:
    return [
        _uuid(run_id),
        step,
        status,
        message[:4000],
        RunEvent._meta.get_field("data").get_db_prep_value(data or {}, connection),
        timezone.now(),
    ]


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# The columns a claimed step is rebuilt from (``output`` stays deferred: only a fan-out's join reads it).
_STEP_COLUMNS = [f.attname for f in RunStep._meta.concrete_fields if f.name != "output"]
# Only names from the models' own metadata are formatted in; every value is a parameter.
_CLAIM_NEXT_SQL = f"""
WITH {{no_flush}}claimed AS (
    UPDATE {RunStep._meta.db_table} SET status = %(running)s, attempt = attempt + 1, heartbeat_at = %(now)s,
           started_at = COALESCE(started_at, %(now)s)
    WHERE run_id = %(run)s AND name = %(name)s AND phase = %(main)s AND status = %(pending)s
      AND EXISTS (SELECT 1 FROM {Run._meta.db_table}
                  WHERE id = %(run)s AND status = %(running)s AND NOT cancel_requested)
    RETURNING {", ".join(_q(c) for c in _STEP_COLUMNS)}
), logged AS (
    {_RUNEVENT_INSERT}
    SELECT run_id, name, %(running)s, LEFT(title || ': started', 4000), %(no_data)s, %(now)s FROM claimed
)
SELECT {", ".join(_q(c) for c in _STEP_COLUMNS)} FROM claimed{{no_flush_where}}
"""  # noqa: S608


def _claim_next(run: Run, step_name: str) -> RunStep | None:
    """Claim the next main step of a RUNNING run in one statement (pending → running, compare-and-set, with its
    "started" event). None when the compare-and-set did not win: the step is not pending, or the run stopped
    running or was asked to cancel; the caller then takes the ORM path, which sorts out which."""
    now = timezone.now()
    cte, where = _no_flush()
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_NEXT_SQL.format(no_flush=cte, no_flush_where=where),
            {
                "running": StepStatus.RUNNING.value,
                "pending": StepStatus.PENDING.value,
                "main": StepPhase.MAIN.value,
                "now": now,
                "run": _uuid(run.pk),
                "name": step_name,
                "no_data": RunEvent._meta.get_field("data").get_db_prep_value({}, connection),
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    step = RunStep.from_db(connection.alias, _STEP_COLUMNS, row)
    step.run = run
    return step


def _claim_first(run: Run, step: RunStep, now: datetime) -> bool | None:
    """Claim the first step of a PENDING run and start the run, in one statement: the step's compare-and-set
    (pending, the attempt read), the run's start (pending -> running) only if the claim won, their log rows in that
    order (the run's, then the step's) and the run's outbox event. None: the claim lost (someone else has the
    step); True: claimed and the run started; False: claimed, but the run was no longer pending. The objects in
    hand are updated as the ORM path updates them."""
    running, pending, run_id = StepStatus.RUNNING.value, StepStatus.PENDING.value, _uuid(run.pk)
    run_message = f"{run.title}: started"
    payload = {**_run_meta(run.pk), "status": running, "step": "", "message": run_message[:4000]}
    outbox, outbox_params = events.insert_sql(_RUN_EVENT_TYPES[RunStatus.RUNNING], f"runs/{run.pk}", payload)
    cte, where = _no_flush()
    # Only names from the models' own metadata are formatted in; every value is a parameter.
    sql = f"""
WITH {cte}claimed AS (
    UPDATE {RunStep._meta.db_table} SET status = %s, attempt = attempt + 1, heartbeat_at = %s,
           started_at = COALESCE(started_at, %s)
    WHERE id = %s AND status = %s AND attempt = %s RETURNING id
), started AS (
    UPDATE {Run._meta.db_table} SET status = %s, started_at = %s, heartbeat_at = %s, wake_at = NULL
    WHERE id = %s AND status = %s AND EXISTS (SELECT 1 FROM claimed) RETURNING id
), logged AS (
    {_RUNEVENT_INSERT}
    SELECT run_id, step, status, message, data, created_at FROM (
        SELECT 0, %s, %s, %s, %s, %s, %s FROM started UNION ALL SELECT 1, %s, %s, %s, %s, %s, %s FROM claimed
    ) AS row (n, run_id, step, status, message, data, created_at) ORDER BY n
), published AS (
    {outbox} FROM started
)
SELECT (SELECT COUNT(*) FROM claimed), (SELECT COUNT(*) FROM started){where}
"""  # noqa: S608
    params = [running, now, now, step.pk, pending, step.attempt]
    params += [running, now, now, run_id, pending]
    params += _runevent_params(run.pk, "", running, run_message, None)
    params += _runevent_params(run.pk, step.name, running, f"{step.title}: started", None)
    params += outbox_params
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        claimed, started = cursor.fetchone()
    if not claimed:
        return None
    _mark_claimed(step, now)
    if not started:
        return False
    events.wake_on_commit()
    run.status, run.started_at, run.heartbeat_at, run.wake_at = RunStatus.RUNNING, now, now, None
    return True


def _mark_claimed(step: RunStep, now: datetime, deadline: datetime | None = None) -> None:
    """What a won claim wrote, on the object in hand (without reading the row back)."""
    step.status, step.attempt, step.heartbeat_at = StepStatus.RUNNING, step.attempt + 1, now
    step.started_at = step.started_at or now
    step.deadline = step.deadline or deadline


@transaction.atomic
def _cancel_before_start(task: Task, run: Run, step: RunStep) -> None:
    """The run was asked to cancel before this claimed main step's body ran: end it cancelled, start cleanup."""
    _finish_step(step, StepStatus.CANCELLED, "cancelled before it started")
    _begin_cleanup(task, run, cancelled=True, reason="cancelled by request")


def _finish_main_step(run: Run, step: RunStep, output: Any) -> bool:
    """A main step that is not the run's last succeeded: the step's compare-and-set, its log row, the outbox's
    progress event and the run's percent/ETA/heartbeat in one statement. False: the step was no longer active
    (someone else finished it)."""
    now = timezone.now()
    message = f"{step.title}: done"
    percent, eta = _progress(run.pk, step.order, 1.0, now)
    table = RunStep._meta.db_table
    sets = "status = %s, message = %s, finished_at = %s, heartbeat_at = %s, progress = 1.0"
    params: list[Any] = [StepStatus.SUCCEEDED.value, "done", now, now]
    if output is not None:
        sets += ", output = %s"
        value = output if isinstance(output, dict) else {"result": output}
        params.append(RunStep._meta.get_field("output").get_db_prep_value(value, connection))
    params += [step.pk, StepStatus.RUNNING.value, StepStatus.WAITING.value, StepStatus.PENDING.value]
    payload = {
        **_run_meta(run.pk),
        "status": StepStatus.SUCCEEDED.value,
        "step": step.name,
        "message": message[:4000],
    }
    outbox, outbox_params = events.insert_sql("run.progress", f"runs/{run.pk}", payload)
    active = sorted(RunStatus.active())
    cte, where = _no_flush()
    # Only names from the models' own metadata are formatted in; every value is a parameter.
    sql = f"""
WITH {cte}finished AS (
    UPDATE {table} SET {sets} WHERE id = %s AND status IN (%s, %s, %s) RETURNING id
), logged AS (
    {_RUNEVENT_INSERT} SELECT %s, %s, %s, %s, %s, %s FROM finished
), published AS (
    {outbox} FROM finished
), progressed AS (
    UPDATE {Run._meta.db_table} SET progress = %s, eta = %s, heartbeat_at = %s
    WHERE id = %s AND status IN ({", ".join(["%s"] * len(active))}) AND EXISTS (SELECT 1 FROM finished)
)
SELECT COUNT(*) FROM finished{where}
"""  # noqa: S608
    params += _runevent_params(run.pk, step.name, StepStatus.SUCCEEDED.value, message, None)
    params += outbox_params
    params += [percent, eta, now, _uuid(run.pk), *active]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (finished,) = cursor.fetchone()
    if finished:
        events.wake_on_commit()
    return bool(finished)


# kind, title and subject of a run for its outbox events; fixed at launch, so read once per run and process.
_RUN_META: OrderedDict[str, dict] = OrderedDict()


def _remember_run(run: Run) -> None:
    """Fill the run's outbox metadata from a row already in hand, sparing ``_run_meta`` its query."""
    key = str(run.pk)
    if key in _RUN_META:
        return
    subject_type = ""
    if run.subject_type_id:
        from django.contrib.contenttypes.models import ContentType

        ct = ContentType.objects.get_for_id(run.subject_type_id)  # cached per process by Django
        subject_type = f"{ct.app_label}.{ct.model}"
    _store_meta(
        key,
        {
            "run": key,
            "kind": run.kind,
            "title": run.title,
            "subject_type": subject_type,
            "subject_id": run.subject_id,
        },
    )


def _store_meta(key: str, meta: dict) -> None:
    _RUN_META[key] = meta
    while len(_RUN_META) > _ETAS_MAX:
        _RUN_META.popitem(last=False)


def _run_meta(run_id: Any) -> dict:
    key = str(run_id)
    meta = _RUN_META.get(key)
    if meta is None:
        row = (
            Run.objects.filter(pk=run_id)
            .values("kind", "title", "subject_type__app_label", "subject_type__model", "subject_id")
            .first()
            or {}
        )
        subject_type = (
            f"{row['subject_type__app_label']}.{row['subject_type__model']}"
            if row.get("subject_type__model")
            else ""
        )
        meta = {
            "run": key,
            "kind": row.get("kind", ""),
            "title": row.get("title", ""),
            "subject_type": subject_type,
            "subject_id": row.get("subject_id", ""),
        }
        _store_meta(key, meta)
    return meta


def _stale_after() -> timedelta:
    return timedelta(seconds=float(settings.WORKFLOW_STALE_AFTER))


def _duration(spec: DurationSpec, ctx: StepContext) -> float:
    return float(spec(ctx) if callable(spec) else spec)


# Main-step estimates per run, (order, eta seconds) in order. They are fixed at launch, so each process reads them
# once per run instead of on every transition (the steps of a run mostly pass through one process, inline).
_ETAS: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()
_ETAS_MAX = 512


def _main_etas(run_id: Any) -> list[tuple[int, float]]:
    key = str(run_id)
    etas = _ETAS.get(key)
    if etas is None:
        etas = list(
            RunStep.objects.filter(run_id=run_id, phase=StepPhase.MAIN)
            .order_by("order")
            .values_list("order", "eta_seconds")
        )
        _ETAS[key] = etas
        while len(_ETAS) > _ETAS_MAX:
            _ETAS.popitem(last=False)
    return etas


def _refresh_run_progress(
    run_id: Any, order: int, fraction: float, *, now: datetime | None = None, **extra: Any
) -> bool:
    """Recompute percent and ETA while main step ``order`` is ``fraction`` done (one write; ``extra`` fields
    are written in the same UPDATE). Main steps run strictly in order, so every step before it has succeeded
    and every step after it is pending. Returns True while main steps remain (this one unfinished, or more)."""
    now = now or timezone.now()
    percent, eta = _progress(run_id, order, fraction, now)
    Run.objects.filter(pk=run_id, status__in=RunStatus.active()).update(progress=percent, eta=eta, **extra)
    return fraction < 1.0 or _main_steps_after(run_id, order)


def _progress(run_id: Any, order: int, fraction: float, now: datetime) -> tuple[float, datetime]:
    """(percent, ETA) of the run while main step ``order`` is ``fraction`` done."""
    etas = _main_etas(run_id)
    total = sum(eta for _, eta in etas)
    done = sum(eta for o, eta in etas if o < order) + fraction * sum(eta for o, eta in etas if o == order)
    percent = 100.0 * done / total if total else 100.0
    return round(percent, 2), now + timedelta(seconds=max(0.0, total - done))


def _main_steps_after(run_id: Any, order: int) -> bool:
    return any(o > order for o, _ in _main_etas(run_id))


class _Heartbeat:
    """Stamps the step and run every WORKFLOW_HEARTBEAT_INTERVAL seconds while a body runs.

    One thread per process beats for every body running in it (a worker process runs one at a time; fan-out items
    or a command may run more): starting a thread for each step cost ~2 ms on a busy machine (``Thread.start``
    waits until the new thread is scheduled), more than a short step's own bookkeeping. Entering registers the
    body, leaving removes it; the thread sleeps until the earliest registered body is due, starts on first use
    (after a fork too: a forked worker inherits no threads) and ends, closing its connection, once no body has been
    registered for ``max(1 s, interval)`` (the steps of a run in a row keep it; an idle worker holds nothing)."""

    _cond = threading.Condition()
    _due: dict[int, tuple[float, Any, int]] = {}  # token -> (next beat, monotonic; run id; step pk)
    _next_token = 0
    _thread: threading.Thread | None = None

    def __init__(self, run_id: Any, step_pk: int) -> None:
        self.run_id = run_id
        self.step_pk = step_pk
        self.token = 0
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        cls = type(self)
        with cls._cond:
            cls._next_token += 1
            self.token = cls._next_token
            interval = float(settings.WORKFLOW_HEARTBEAT_INTERVAL)
            cls._due[self.token] = (time.monotonic() + interval, self.run_id, self.step_pk)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._loop, name="workflow-heartbeat", daemon=True)
                cls._thread.start()
            self.thread = cls._thread
            cls._cond.notify()
        return self

    def __exit__(self, *exc: object) -> None:
        with type(self)._cond:
            type(self)._due.pop(self.token, None)

    @classmethod
    def _after_fork(cls) -> None:
        # The child has none of the parent's threads, and the condition may have been held by one of them.
        cls._cond = threading.Condition()
        cls._due = {}
        cls._thread = None

    @classmethod
    def _loop(cls) -> None:
        failing = False
        try:
            while (due := cls._take_due()) is not None:
                failing = cls._beat_all(due, failing)
        finally:
            cls._drop_connection()

    @classmethod
    def _beat_all(cls, due: list[tuple[Any, int]], failing: bool) -> bool:
        """Stamp each due body; returns whether the database is failing (to log an outage once)."""
        for run_id, step_pk in due:
            try:
                cls._beat(run_id, step_pk)
            except Exception as exc:
                # A database blip must not end the heartbeat: a silent live step would be taken over by the
                # reaper once the database is back. Drop the broken connection; the next beat reconnects.
                # Logged once per outage, by class only (a driver's message may quote the connection string).
                if not failing:
                    logger.warning(
                        "heartbeat for step %s failed (%s); retrying every %gs",
                        step_pk, type(exc).__name__, float(settings.WORKFLOW_HEARTBEAT_INTERVAL),
                    )  # fmt: skip
                failing = True
                cls._drop_connection()
            else:
                if failing:
                    logger.info("heartbeat for step %s is beating again", step_pk)
                failing = False
        return failing

    @classmethod
    def _take_due(cls) -> list[tuple[Any, int]] | None:
        """Wait until a registered body is due; reschedule those that are and return them. None: nothing was
        registered for a while; the thread is to end (it is forgotten here, under the lock, so the next body
        starts a new one)."""
        idle_since = None
        with cls._cond:
            while True:
                now = time.monotonic()
                interval = float(settings.WORKFLOW_HEARTBEAT_INTERVAL)
                if not cls._due:
                    idle_since = idle_since or now
                    linger = max(1.0, interval) - (now - idle_since)
                    if linger <= 0:
                        cls._thread = None
                        return None
                    cls._cond.wait(linger)  # woken early by a body registering
                    continue
                idle_since = None
                due = []
                for token, (at, run_id, step_pk) in list(cls._due.items()):
                    if at <= now:
                        cls._due[token] = (now + interval, run_id, step_pk)
                        due.append((run_id, step_pk))
                if due:
                    return due
                cls._cond.wait(max(0.01, min(at for at, _, _ in cls._due.values()) - now))

    @staticmethod
    def _beat(run_id: Any, step_pk: int) -> None:
        now = timezone.now()
        RunStep.objects.filter(pk=step_pk).update(heartbeat_at=now)
        Run.objects.filter(pk=run_id).update(heartbeat_at=now)

    @staticmethod
    def _drop_connection() -> None:
        """Close this thread's connection; closing a connection the server already dropped may raise too."""
        try:
            connection.close()
        except Exception:
            connection.connection = None  # forget it: the next query opens a new one


os.register_at_fork(after_in_child=_Heartbeat._after_fork)


def _resend(task: Task, kind: str, run_id: str, step_name: str, countdown: float) -> None:
    """Send this step's message again after ``countdown`` seconds, carrying the rest of the chain.

    What ``Task.retry`` does, minus its exception: Celery builds a formatted traceback for every Retry raised,
    which cost more CPU than a poll's own check. This message then ends normally (and is acked). The message goes
    where the step's task is routed (``step_task``), not back to the queue this one came from: a poll step's
    first check may have run inline after the step before it."""
    options = task.request.as_execution_options()  # the rest of the chain, ids, headers
    step_task(kind, step_name).signature(
        (run_id, step_name), {}, options=options, countdown=countdown
    ).apply_async()
    _drop_chain(task)


def _drop_chain(task: Task | None) -> None:
    """Stop the rest of this message's chain: another owner carries it, or the run is ending."""
    if task is not None:
        task.request.chain = None
        task.request.callbacks = None


# --- step execution -------------------------------------------------------------------------------------------------


def _claim(step: RunStep, now: datetime, deadline: datetime | None = None) -> bool:
    """Compare-and-set this step to RUNNING for this worker. False: someone else owns it, or it is done."""
    if step.status in StepStatus.terminal():
        return False
    if step.status == StepStatus.RUNNING:
        if step.heartbeat_at and step.heartbeat_at > now - _stale_after():
            return False  # a live worker is on it: this message is a duplicate
        logger.warning("taking over stale step %s of run %s", step.name, step.run_id)
    updated = RunStep.objects.filter(pk=step.pk, status=step.status, attempt=step.attempt).update(
        status=StepStatus.RUNNING,
        attempt=F("attempt") + 1,
        heartbeat_at=now,
        started_at=step.started_at or now,
        **({"deadline": deadline} if deadline is not None else {}),
    )
    return updated == 1


@dataclass(frozen=True)
class _Continue:
    """Returned by ``_execute_one`` when the step succeeded and its run goes on (``main``: in its main phase)."""

    run: Run
    main: bool


def execute_step(task: Task, run_id: str, step_name: str) -> Any:
    """Body of the ``core.execute_step`` task: run the step, then the steps after it in this same message
    while ``WORKFLOW_INLINE_SECONDS`` last (see ``_take_inline``)."""
    close_old_connections()
    started = time.monotonic()
    result = _execute_one(task, run_id, step_name)
    while isinstance(result, _Continue):
        next_name = _take_inline(task, run_id, result.run.kind, started)
        if next_name is None:
            return None
        # The common case, the next main step of a running run, is claimed in one statement; anything else (the
        # step not pending, the run cancelled or ending) goes through the full entry, which reads and decides.
        step = _claim_next(result.run, next_name) if _one_statement() and result.main else None
        if step is None:
            result = _execute_one(task, run_id, next_name)
        else:
            result = _run_claimed(task, result.run, step, timezone.now())
    return result


def _take_inline(task: Task, run_id: str, kind: str, started: float) -> str | None:
    """Pop the next message of this chain and run its step here instead of sending it through the broker.

    Each message through the broker costs a publish, a trip to the back of the queue (behind every other
    run's steps) and a consume; a deploy's short steps in a row (verify → place → namespace → ...) were
    spending more time in the queue than in their bodies. The popped step is claimed and recorded exactly as
    if its own message had arrived, so nothing about idempotence changes: if this worker dies inside it, the
    message being processed (an earlier, finished step) is redelivered and dropped, and the reaper resumes
    the run at the step that went silent. Fan-out steps keep their own message (``task.replace`` needs it);
    past the time budget the chain goes back to the broker so one run cannot hold a worker process.
    """
    chain = task.request.chain
    if not chain or time.monotonic() - started >= float(settings.WORKFLOW_INLINE_SECONDS):
        return None
    nxt = chain[-1]  # Celery keeps a chain's remaining signatures in reverse order: the next is last
    args = list(nxt.get("args") or [])
    if nxt.get("task") != "core.execute_step" or len(args) != 2 or str(args[0]) != str(run_id):
        return None
    spec = get_workflow(kind).step(args[1])
    if spec.each is not None or spec.poll is not None:
        return None  # a fan-out needs its own message; a poll check belongs on the poll queue (``step_task``)
    chain.pop()
    return str(args[1])


def _execute_one(task: Task, run_id: str, step_name: str) -> Any:
    try:
        step = RunStep.objects.select_related("run").get(run_id=run_id, name=step_name)
    except RunStep.DoesNotExist:
        logger.warning("run %s has no step %s (deleted?)", run_id, step_name)
        _drop_chain(task)
        return None
    run = step.run
    _remember_run(run)
    now = timezone.now()
    allowed_run_status = (
        {RunStatus.PENDING, RunStatus.RUNNING} if step.phase == StepPhase.MAIN else {RunStatus.CLEANING_UP}
    )
    if run.status not in allowed_run_status:
        _drop_chain(task)
        return None
    previous_status = step.status
    workflow = get_workflow(run.kind)
    spec = workflow.step(step_name)
    ctx = StepContext(run, step)
    deadline = None
    if spec.poll and step.deadline is None:
        deadline = now + timedelta(seconds=_duration(spec.poll.timeout, ctx))
    if (
        _one_statement()
        and step.phase == StepPhase.MAIN
        and previous_status == StepStatus.PENDING
        and run.status == RunStatus.PENDING
        and not run.cancel_requested
        and deadline is None
    ):
        claimed = _claim_first(run, step, now)
        if claimed is None:
            _drop_chain(task)
            return None
        if (
            not claimed
        ):  # claimed, but the run was no longer pending: read it and decide (a cancel, most likely)
            run.refresh_from_db()
            if run.cancel_requested:
                _cancel_before_start(task, run, step)
                return None
        return _run_claimed(task, run, step, now)
    # Claim, run status and the start event commit together (one commit instead of several fsyncs).
    with transaction.atomic():
        if not _claim(step, now, deadline):
            _drop_chain(task)
            return None
        _mark_claimed(step, now, deadline)
        if run.status == RunStatus.PENDING:
            if Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
                status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, wake_at=None
            ):
                _event(run.pk, "", RunStatus.RUNNING, f"{run.title}: started")
                # What the UPDATE wrote, without reading the row back; a cancel that lands from here on is seen
                # at the next step's claim, as one a moment later would be.
                run.status, run.started_at, run.heartbeat_at, run.wake_at = RunStatus.RUNNING, now, now, None
            else:
                run.refresh_from_db()
        elif not run.heartbeat_at or run.heartbeat_at < now - _stale_after() / 2:
            Run.objects.filter(pk=run.pk).update(heartbeat_at=now, wake_at=None)
        # else: the previous step's finish (a step run inline after it) or the last check of this waiting step
        # stamped the run recently; the body's heartbeat thread stamps it again long before the reaper would
        # call it silent (a past wake_at counts as none).
        if step.phase == StepPhase.MAIN and run.cancel_requested:
            _cancel_before_start(task, run, step)
            return None
        if previous_status == StepStatus.PENDING:
            _event(run.pk, step.name, StepStatus.RUNNING, f"{step.title}: started")
        elif previous_status == StepStatus.RUNNING:
            _event(
                run.pk,
                step.name,
                StepStatus.RUNNING,
                f"{step.title}: resumed on a new worker (attempt {step.attempt})",
            )
            Run.objects.filter(pk=run.pk).update(resumed_count=F("resumed_count") + 1)
    return _run_claimed(task, run, step, now)


def _run_claimed(task: Task, run: Run, step: RunStep, now: datetime) -> Any:
    """Run the body of a step this worker has just claimed and record its outcome."""
    run_id, step_name = str(run.pk), step.name
    spec = get_workflow(run.kind).step(step_name)
    ctx = StepContext(run, step)
    try:
        with _Heartbeat(run.pk, step.pk):
            _failpoint(run, step, "before")
            if spec.each is not None:
                return _start_fanout(task, ctx, spec)
            result = spec.func(ctx)
            _failpoint(run, step, "after")
    except TaskPredicate:  # Retry/Ignore/Reject from task.replace and friends are control flow, not failures
        raise
    except Cancelled:
        _finish_step(step, StepStatus.CANCELLED, "cancelled while running")
        if step.phase == StepPhase.MAIN:
            _begin_cleanup(task, run, cancelled=True, reason="cancelled by request")
        return None
    except TransientError as exc:
        delay, message = _transient_retry(step, spec, exc)
        if delay is None:
            return _step_failed(task, run, step, message)
        _wait(step, message, delay)
        _event(run.pk, step.name, StepStatus.WAITING, f"{step.title}: {message}")
        return _resend(task, run.kind, run_id, step_name, delay)
    except StepFailed as exc:
        return _step_failed(task, run, step, str(exc))
    except Exception as exc:
        logger.exception("step %s of run %s raised", step.name, run.pk)
        return _step_failed(task, run, step, f"{type(exc).__name__}: {exc}")

    if isinstance(result, NotYet):
        if timezone.now() >= step.deadline:
            waited = (timezone.now() - (step.started_at or now)).total_seconds()
            last = f" (last check: {result.message})" if result.message else ""
            return _step_failed(
                task, run, step, f"timed out after {waited:.0f}s waiting for {spec.poll.what}{last}"
            )
        interval = result.after if result.after is not None else _duration(spec.poll.interval, ctx)
        _wait(step, result.message, interval, result.progress)
        return _resend(task, run.kind, run_id, step_name, interval)
    return _step_succeeded(task, run, step, result)


def _transient_retry(step: RunStep, spec: Step, exc: TransientError) -> tuple[float | None, str]:
    """(delay before the next attempt, message) after a transient failure; (None, message) once the window that
    opened at the step's first transient failure has passed.

    The window, not a count, is the rule: an API server restarting or a load balancer failing over is out for
    seconds to minutes, and a count of quick retries (3 in 11 s) gave up long before it came back. The delay
    doubles from ``retry_delay`` up to ``WORKFLOW_RETRY_MAX_DELAY``, and the last attempt is made when the window
    ends. ``failing_since`` survives a worker's death, so a resumed step keeps its window."""
    now = timezone.now()
    window = float(
        spec.transient_window if spec.transient_window is not None else settings.WORKFLOW_TRANSIENT_WINDOW
    )
    since = step.failing_since or now
    failures = step.transient_failures + 1
    RunStep.objects.filter(pk=step.pk).update(failing_since=since, transient_failures=failures)
    step.failing_since, step.transient_failures = since, failures
    left = window - (now - since).total_seconds()
    if left <= 0:
        return None, f"{exc} (gave up after {failures} attempts over {window:g}s)"
    first = float(spec.retry_delay if spec.retry_delay is not None else settings.WORKFLOW_RETRY_DELAY)
    delay = min(first * 2 ** (failures - 1), float(settings.WORKFLOW_RETRY_MAX_DELAY), left)
    return delay, f"{exc} (attempt {failures} failed; retrying in {delay:.3g}s, for up to {left:.0f}s more)"


# --- failpoints (tests only) ------------------------------------------------------------------------------------
# WORKFLOW_FAILPOINTS names steps where a worker misbehaves on purpose, so that tests and the fault matrix drive a
# run to an exact point instead of sleeping and hoping (as AWX's and etcd's failpoints do). An entry is
# ``[kind/]step:action``; a failpoint acts on the step's first attempt only, so the run can go on past it:
#   pause        before the body: record a "failpoint" event and hold (heartbeat beating) until
#                ``release_failpoint`` (or 5 minutes);
#   crash        before the body: SIGKILL this worker (its whole process group), as a machine dying would;
#   crash-after  after the body returned, before its outcome is recorded: the step's effects are on the cluster
#                and in the database but the step is still "running" (the hardest point for idempotence).
# ``[kind/]step.point:pause|crash`` acts inside the body, where it calls ``ctx.failpoint("point")``: between two
# of the step's own effects (cluster deletion's teardown: releases marked uninstalled, namespaces not yet deleted).
# Never set in production.

FAILPOINT_ACTIONS = ("pause", "crash", "crash-after")
FAILPOINT = "failpoint"
_FAILPOINT_RELEASED = "failpoint released"
_FAILPOINT_PAUSE_LIMIT = 300.0


def _armed_failpoint(kind: str, where: str) -> str | None:
    for entry in getattr(settings, "WORKFLOW_FAILPOINTS", None) or ():
        target, _, action = entry.strip().rpartition(":")
        wanted_kind, _, wanted = target.rpartition("/")
        if wanted == where and wanted_kind in ("", kind) and action in FAILPOINT_ACTIONS:
            return action
    return None


def _released(where: str) -> str:
    """The release event's message: the step's own failpoint keeps the historical text."""
    return _FAILPOINT_RELEASED if "." not in where else f"{_FAILPOINT_RELEASED} at {where}"


def _failpoint(run: Run, step: RunStep, when: str, point: str = "") -> None:
    if not getattr(settings, "WORKFLOW_FAILPOINTS", None) or step.attempt != 1:
        return
    where = f"{step.name}.{point}" if point else step.name
    action = _armed_failpoint(run.kind, where)
    if action == "pause" and when in ("before", "inside"):
        _event(run.pk, step.name, FAILPOINT, f"failpoint pause at {where}")
        deadline = time.monotonic() + _FAILPOINT_PAUSE_LIMIT
        while time.monotonic() < deadline:
            if RunEvent.objects.filter(
                run_id=run.pk, step=step.name, status=FAILPOINT, message=_released(where)
            ).exists():
                return
            time.sleep(0.05)
    elif (action, when) in (("crash", "before"), ("crash", "inside"), ("crash-after", "after")):
        import signal

        _event(run.pk, step.name, FAILPOINT, f"failpoint {action} at {where}: killing the worker")
        logger.warning("failpoint %s at %s of run %s: SIGKILL", action, where, run.pk)
        group = os.getpgid(0)
        if group in (os.getpid(), os.getppid()):  # the worker leads its own process group (tests, containers)
            os.killpg(group, signal.SIGKILL)
        os.kill(
            os.getpid(), signal.SIGKILL
        )  # else only this process: never a shell that happens to be our parent


def failpoint_reached(run_id: Any, where: str) -> bool:
    """True once a worker hit the failpoint armed at ``where`` (``step`` or ``step.point``) of the run (paused
    or about to crash)."""
    step_name = where.partition(".")[0]
    return RunEvent.objects.filter(
        run_id=run_id,
        step=step_name,
        status=FAILPOINT,
        message__in=[
            f"failpoint pause at {where}",
            *(f"failpoint {a} at {where}: killing the worker" for a in FAILPOINT_ACTIONS),
        ],
    ).exists()


def release_failpoint(run_id: Any, where: str) -> None:
    """Let a step paused at its failpoint (``step`` or ``step.point``) go on."""
    _event(run_id, where.partition(".")[0], FAILPOINT, _released(where))


@transaction.atomic
def _wait(step: RunStep, message: str, interval: float, progress: float | None = None) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {"status": StepStatus.WAITING, "message": message, "heartbeat_at": now}
    if progress is not None:
        fields["progress"] = max(0.0, min(1.0, progress))
    RunStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING).update(**fields)
    run_fields = {"heartbeat_at": now, "wake_at": now + timedelta(seconds=interval)}
    if step.phase == StepPhase.MAIN:
        fraction = step.progress if progress is None else fields["progress"]
        step.progress = fraction
        _refresh_run_progress(step.run_id, step.order, fraction, now=now, **run_fields)
    else:
        Run.objects.filter(pk=step.run_id).update(**run_fields)


def _finish_step(step: RunStep, status: str, message: str, output: Any = None) -> bool:
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "message": message, "finished_at": now, "heartbeat_at": now}
    if status == StepStatus.SUCCEEDED:
        fields["progress"] = 1.0
    if output is not None:
        fields["output"] = output if isinstance(output, dict) else {"result": output}
    updated = RunStep.objects.filter(
        pk=step.pk, status__in=[StepStatus.RUNNING, StepStatus.WAITING, StepStatus.PENDING]
    ).update(**fields)
    if updated:
        _event(
            step.run_id,
            step.name,
            status,
            f"{step.title}: {message}" if message else f"{step.title}: {status}",
        )
    return bool(updated)


def _step_succeeded(task: Task, run: Run, step: RunStep, result: Any) -> Any:
    """Returns ``_Continue`` when the run goes on (the caller may run the next step inline)."""
    if _one_statement() and step.phase == StepPhase.MAIN and _main_steps_after(run.pk, step.order):
        if _finish_main_step(run, step, result):
            return _Continue(run, main=True)
        _drop_chain(task)
        return None
    return _step_succeeded_in_transaction(task, run, step, result)


@transaction.atomic
def _step_succeeded_in_transaction(task: Task, run: Run, step: RunStep, result: Any) -> Any:
    if not _finish_step(step, StepStatus.SUCCEEDED, "done", result):
        _drop_chain(task)
        return None
    if step.phase == StepPhase.MAIN:
        if not _main_steps_after(run.pk, step.order):
            _finish_run(
                run, succeeded=True
            )  # writes progress 100 %, the ETA and the heartbeat with the status
            return None
        _refresh_run_progress(run.pk, step.order, 1.0, heartbeat_at=timezone.now())
    else:
        Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        _maybe_finish_cleanup(run)
    return _Continue(run, main=step.phase == StepPhase.MAIN)


@transaction.atomic
def _step_failed(task: Task, run: Run, step: RunStep, message: str) -> None:
    if not _finish_step(step, StepStatus.FAILED, message):
        _drop_chain(task)
        return None
    if step.phase == StepPhase.MAIN:
        _begin_cleanup(task, run, cancelled=False, reason=f"{step.title} failed: {message}")
    else:
        # Cleanup is best effort: record the failure and let the chain go on to the next cleanup step.
        Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        _maybe_finish_cleanup(run)
    return None


def _begin_cleanup(task: Task | None, run: Run, *, cancelled: bool, reason: str) -> None:
    """Skip the remaining main steps; run the cleanup steps (if any), then end FAILED or CANCELLED."""
    _drop_chain(task)
    now = timezone.now()
    RunStep.objects.filter(run_id=run.pk, phase=StepPhase.MAIN, status=StepStatus.PENDING).update(
        status=StepStatus.SKIPPED, finished_at=now
    )
    cleanup = list(
        RunStep.objects.filter(run_id=run.pk, phase=StepPhase.CLEANUP, status=StepStatus.PENDING).order_by(
            "order"
        )
    )
    if cancelled:
        Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    if not cleanup:
        _finish_run(run, succeeded=False, cancelled=cancelled, error=reason)
        return
    if Run.objects.filter(pk=run.pk, status__in=[RunStatus.PENDING, RunStatus.RUNNING]).update(
        status=RunStatus.CLEANING_UP, error=reason, heartbeat_at=now, wake_at=None
    ):
        _event(run.pk, "", RunStatus.CLEANING_UP, f"{reason}; running cleanup")
        transaction.on_commit(lambda: send_chain(run.pk, [s.name for s in cleanup], run.kind))


def _maybe_finish_cleanup(run: Run) -> None:
    if RunStep.objects.filter(
        run_id=run.pk, phase=StepPhase.CLEANUP, status__in=StepStatus.active()
    ).exists():
        return
    run.refresh_from_db(fields=["cancel_requested", "error"])
    _finish_run(run, succeeded=False, cancelled=run.cancel_requested, error=run.error)


def _finish_run(run: Run, *, succeeded: bool, cancelled: bool = False, error: str = "") -> None:
    now = timezone.now()
    status = RunStatus.SUCCEEDED if succeeded else RunStatus.CANCELLED if cancelled else RunStatus.FAILED
    fields: dict[str, Any] = {"status": status, "finished_at": now, "wake_at": None, "heartbeat_at": now}
    if succeeded:
        fields.update(progress=100.0, eta=now, error="")
    else:
        fields["error"] = error
    if Run.objects.filter(pk=run.pk, status__in=RunStatus.active()).update(**fields):
        if succeeded:
            RunStep.objects.filter(run_id=run.pk, phase=StepPhase.CLEANUP, status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED
            )
        message = {
            RunStatus.SUCCEEDED: f"{run.title}: succeeded",
            RunStatus.FAILED: f"{run.title}: failed: {error}",
            RunStatus.CANCELLED: f"{run.title}: cancelled",
        }[status]
        _event(run.pk, "", status, message)
        from .signals import run_finished

        run.status = status
        run_finished.send(sender=Run, run=run)


# --- fan-out --------------------------------------------------------------------------------------------------------


def _start_fanout(task: Task, ctx: StepContext, spec: Step) -> Any:
    from celery import chord

    from .tasks import execute_fanout_item, join_fanout

    items = list(spec.func(ctx) or [])
    RunStep.objects.filter(pk=ctx.step.pk).update(output={"items": items})
    _event(
        ctx.run.pk, ctx.step.name, StepStatus.RUNNING, f"{ctx.step.title}: fanning out to {len(items)} items"
    )
    if not items:
        return finish_fanout(task, str(ctx.run.pk), ctx.step.name, [])
    header = [execute_fanout_item.si(str(ctx.run.pk), ctx.step.name, i) for i in range(len(items))]
    raise task.replace(chord(header, join_fanout.s(str(ctx.run.pk), ctx.step.name)))


def execute_fanout_item(run_id: str, step_name: str, index: int) -> dict:
    """One branch of a fan-out: returns {"ok": result} or {"error": message}; never raises, so the chord joins."""
    close_old_connections()
    step = RunStep.objects.select_related("run").get(run_id=run_id, name=step_name)
    spec = get_workflow(step.run.kind).step(step_name)
    item = step.output.get("items", [])[index]
    ctx = StepContext(step.run, step)
    try:
        with _Heartbeat(run_id, step.pk):
            return {"ok": spec.each(ctx, item)}
    except Exception as exc:
        logger.exception("fan-out item %s of step %s failed", index, step_name)
        return {"error": f"item {index}: {type(exc).__name__}: {exc}"}


def finish_fanout(task: Task, run_id: str, step_name: str, results: list[dict]) -> Any:
    close_old_connections()
    step = RunStep.objects.select_related("run").get(run_id=run_id, name=step_name)
    run = step.run
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return _step_failed(
            task, run, step, f"{len(errors)} of {len(results)} failed: " + "; ".join(errors[:5])
        )
    values = [r.get("ok") for r in results]
    spec = get_workflow(run.kind).step(step_name)
    ctx = StepContext(run, step)
    try:
        output = spec.join(ctx, values) if spec.join else {"results": values}
    except Exception as exc:
        return _step_failed(task, run, step, f"{type(exc).__name__}: {exc}")
    if isinstance(output, dict):
        output = {"items": step.output.get("items", []), **output}
    outcome = _step_succeeded(task, run, step, output)
    return None if isinstance(outcome, _Continue) else outcome


# --- cancel and reaper -------------------------------------------------------------------------------------------


def request_cancel(run: Run, *, reason: str = "cancelled by request") -> bool:
    """Ask a run to stop. Returns False if it had already ended. A run no worker has started yet goes straight
    to its cleanup steps; waiting steps are cancelled right away; a running step stops at its next boundary."""
    if _cancel_pending(run, reason):
        return True
    if not Run.objects.filter(pk=run.pk, status__in=[RunStatus.RUNNING, RunStatus.PENDING]).update(
        cancel_requested=True
    ):
        return Run.objects.filter(pk=run.pk, status=RunStatus.CLEANING_UP).exists()
    _event(run.pk, "", "cancel_requested", reason)
    waiting = RunStep.objects.filter(run_id=run.pk, phase=StepPhase.MAIN, status=StepStatus.WAITING).first()
    if waiting and _finish_step(waiting, StepStatus.CANCELLED, "cancelled while waiting"):
        # No message is being processed here, so there is no chain to drop; the waiting step's pending retry
        # message will find the step terminal and do nothing.
        run.refresh_from_db()
        _begin_cleanup(None, run, cancelled=True, reason=reason)
    return True


def _cancel_pending(run: Run, reason: str) -> bool:
    """Cancel a run still PENDING: its cleanup steps run all the same (they put the subject back into a state it
    can leave: a cluster being deleted returns to ERROR, a registration records why it stopped, ...).

    The run is taken PENDING → CLEANING_UP by one compare-and-set, committed on its own: a worker starting the
    first step at the same moment either got there first (the CAS fails and the cancel becomes the usual
    flag, seen at the step's boundary) or finds the run cleaning up, drops its message and leaves the step
    to the skip below. No transaction here holds the run's row while waiting for a step's row (the opposite
    order of a worker's claim), so the two cannot deadlock."""
    if run.status != RunStatus.PENDING:
        return False
    now = timezone.now()
    if not Run.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
        status=RunStatus.CLEANING_UP, cancel_requested=True, error=reason, heartbeat_at=now, wake_at=None
    ):
        return False
    with transaction.atomic():
        _event(run.pk, "", "cancel_requested", reason)
        RunStep.objects.filter(run_id=run.pk, phase=StepPhase.MAIN, status=StepStatus.PENDING).update(
            status=StepStatus.SKIPPED, finished_at=now
        )
        cleanup = list(
            RunStep.objects.filter(
                run_id=run.pk, phase=StepPhase.CLEANUP, status=StepStatus.PENDING
            ).order_by("order")
        )
        if not cleanup:
            _finish_run(run, succeeded=False, cancelled=True, error=reason)
            return True
        _event(
            run.pk, "", RunStatus.CLEANING_UP, f"{run.title}: cancelled before it started; running cleanup"
        )
        names = [s.name for s in cleanup]
        transaction.on_commit(lambda: send_chain(run.pk, names, run.kind))
    return True


class RunRefused(Refused):
    """A request about a run is refused (the run has already ended)."""

    class Code(TextChoices):
        RUN_ENDED = "run_ended", "The run has already ended"

    default_status = 409


def cancel(run: Run, *, reason: str = "cancelled by request") -> None:
    """``request_cancel`` for a caller that must say why not: refuses a run that has already ended."""
    if not request_cancel(run, reason=reason):
        run.refresh_from_db(fields=["status"])
        raise RunRefused(f"Run already {run.status}; nothing to cancel.", code=RunRefused.Code.RUN_ENDED)


def reap_stale_runs() -> list[str]:
    """Resume active runs whose worker went silent; returns the ids of runs resumed."""
    now = timezone.now()
    stale_before = now - _stale_after()
    candidates = Run.objects.filter(
        Q(status__in=[RunStatus.RUNNING, RunStatus.CLEANING_UP], heartbeat_at__lt=stale_before)
        | Q(status=RunStatus.PENDING, created_at__lt=stale_before),
    ).filter(Q(wake_at__isnull=True) | Q(wake_at__lt=stale_before))
    resumed = []
    for run in candidates.only("id", "status", "heartbeat_at", "created_at", "kind", "params")[:500]:
        claimed = Run.objects.filter(pk=run.pk, status=run.status, heartbeat_at=run.heartbeat_at).update(
            heartbeat_at=now
        )
        if not claimed:
            continue
        phase = StepPhase.CLEANUP if run.status == RunStatus.CLEANING_UP else StepPhase.MAIN
        active = list(
            RunStep.objects.filter(run_id=run.pk, phase=phase, status__in=StepStatus.active())
            .order_by("order")
            .values_list("name", "status")
        )
        remaining = [name for name, _ in active]
        silent = (now - (run.heartbeat_at or run.created_at)).total_seconds()
        if not remaining:
            full = Run.objects.get(pk=run.pk)
            if phase == StepPhase.MAIN:
                _finish_run(full, succeeded=True)
            else:
                _maybe_finish_cleanup(full)
            continue
        owner = (run.params or {}).get(OWNER_PARAM)
        if owner and phase == StepPhase.MAIN:
            # Carried out by a process of its own (a command), which is gone: end the run, never hand its work to a
            # worker (its user stopped it, or would not expect it to go on elsewhere). Its cleanup runs on a worker.
            _close_orphaned(run.pk, owner, silent)
            continue
        _event(
            run.pk, remaining[0], "resumed", f"no sign of life for {silent:.0f}s; resuming at {remaining[0]}"
        )
        if active[0][1] != StepStatus.RUNNING:
            # A step that is RUNNING is counted when a worker takes it over (``_execute_one``), whoever sent the
            # message that does it (this resend or the broker's redelivery); one resume, counted once. A
            # pending or waiting step whose message was lost is not taken over: the resume is counted here.
            Run.objects.filter(pk=run.pk).update(resumed_count=F("resumed_count") + 1)
        send_chain(run.pk, remaining, run.kind)
        resumed.append(str(run.pk))
    return resumed


# --- runs carried out by the calling process ---------------------------------------------------------------------
# A management command that measures or watches something for its user (``manage.py benchmark``) runs the steps in
# its own process, with its own progress output, instead of asking a worker. Its run is an ordinary run all the same
# (listed, cancellable through the API, progress and events), marked with ``params[OWNER_PARAM]`` naming the
# process. While the process lives, the heartbeat thread stamps the run as a worker's would; when it stops without
# a word (SIGKILL, a machine lost), the reaper ends the run FAILED, naming the process, and its cleanup steps run on
# a worker - the run is closed, not resumed. Only workflows of plain steps (no poll, no fan-out) run this way.

OWNER_PARAM = "owner"


def start_in_process(
    kind: str,
    *,
    owner: str,
    subject: Model | None = None,
    params: dict | None = None,
    user: Any = None,
    title: str | None = None,
) -> Run:
    """Create a RUNNING run of ``kind`` whose main steps this process carries out (``carry_out_in_process``);
    ``owner`` names the process (``manage.py benchmark (pid 4242 on host)``). Nothing is sent to a worker."""
    from django.contrib.contenttypes.models import ContentType

    workflow = get_workflow(kind)
    if any(step.poll or step.each for step in workflow.steps):
        raise ValueError(f"workflow {kind} has waiting or fan-out steps; only a worker can carry it out")
    now = timezone.now()
    with transaction.atomic():
        run = Run.objects.create(
            kind=kind,
            title=title or workflow.title,
            subject_type=ContentType.objects.get_for_model(subject) if subject is not None else None,
            subject_id=str(subject.pk) if subject is not None else "",
            params={**(params or {}), OWNER_PARAM: owner},
            status=RunStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            created_by=recorded_user(user),
        )
        steps = [(StepPhase.MAIN, s) for s in workflow.steps] + [
            (StepPhase.CLEANUP, s) for s in workflow.cleanup
        ]
        RunStep.objects.bulk_create(
            RunStep(
                run=run,
                order=order,
                name=step.name,
                title=step.title,
                phase=phase,
                eta_seconds=step.eta(run.params) if callable(step.eta) else step.eta,
            )
            for order, (phase, step) in enumerate(steps)
        )
        total = sum(s.eta(run.params) if callable(s.eta) else s.eta for s in workflow.steps)
        Run.objects.filter(pk=run.pk).update(eta=now + timedelta(seconds=total))
        _event(run.pk, "", RunStatus.RUNNING, f"{run.title}: started in {owner}")
    return run


def carry_out_in_process(run: Run, body: Callable[[StepContext], Any] | None = None) -> Any:
    """Carry out the main steps of a run made by ``start_in_process`` here, each claimed and recorded as a worker
    would (heartbeat, events, progress); ``body`` replaces the single main step's function (the same service,
    called with this process's own progress and stop callbacks). Returns the last step's result.

    ``Cancelled`` (the run's cancel flag, or the caller's own stop: Ctrl-C), ``StepFailed`` and any other exception
    (``KeyboardInterrupt`` counts as a cancel) end the run here: the cleanup steps run in this process too, then
    the exception is raised again for the caller to report."""
    workflow = get_workflow(run.kind)
    if body is not None and len(workflow.steps) != 1:
        raise ValueError(f"workflow {run.kind} has several main steps; a body can replace only a single one")
    result = None
    for spec in workflow.steps:
        step = RunStep.objects.get(run_id=run.pk, name=spec.name)
        if not _claim(step, timezone.now()):
            raise RuntimeError(f"step {spec.name} of run {run.pk} is not this process's to run")
        step.status, step.attempt = StepStatus.RUNNING, step.attempt + 1
        _event(run.pk, step.name, StepStatus.RUNNING, f"{step.title}: started")
        try:
            with _Heartbeat(run.pk, step.pk):
                result = (body or spec.func)(StepContext(run, step))
        except BaseException as exc:
            cancelled = isinstance(exc, Cancelled | KeyboardInterrupt)
            if cancelled:
                message = "cancelled while running"
            elif isinstance(exc, StepFailed):
                message = str(exc)
            else:
                logger.exception("step %s of run %s raised", step.name, run.pk)
                message = f"{type(exc).__name__}: {exc}"
            _finish_step(step, StepStatus.CANCELLED if cancelled else StepStatus.FAILED, message)
            reason = "cancelled by request" if cancelled else f"{step.title} failed: {message}"
            _clean_up_in_process(workflow, run, cancelled=cancelled, reason=reason)
            raise
        if not _finish_step(step, StepStatus.SUCCEEDED, "done", result):
            return result  # the reaper ended the run meanwhile (this process looked dead): its outcome stands
        _refresh_run_progress(run.pk, step.order, 1.0, heartbeat_at=timezone.now())
    _finish_run(run, succeeded=True)
    return result


def _clean_up_in_process(workflow: Workflow, run: Run, *, cancelled: bool, reason: str) -> None:
    """``_begin_cleanup`` without the broker: skip the remaining main steps, run the cleanup steps here (best
    effort, each recorded), end the run FAILED or CANCELLED."""
    now = timezone.now()
    with transaction.atomic():
        RunStep.objects.filter(run_id=run.pk, phase=StepPhase.MAIN, status=StepStatus.PENDING).update(
            status=StepStatus.SKIPPED, finished_at=now
        )
        fields: dict[str, Any] = {"status": RunStatus.CLEANING_UP, "error": reason, "heartbeat_at": now}
        if cancelled:
            fields["cancel_requested"] = True
        if not Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(**fields):
            return  # already ending (the reaper took it): its cleanup is on its way
        _event(run.pk, "", RunStatus.CLEANING_UP, f"{reason}; running cleanup")
    for step in RunStep.objects.filter(
        run_id=run.pk, phase=StepPhase.CLEANUP, status=StepStatus.PENDING
    ).order_by("order"):
        if not _claim(step, timezone.now()):
            continue
        step.status = StepStatus.RUNNING
        try:
            with _Heartbeat(run.pk, step.pk):
                output = workflow.step(step.name).func(StepContext(run, step))
            _finish_step(step, StepStatus.SUCCEEDED, "done", output)
        except Exception as exc:
            logger.exception("cleanup step %s of run %s raised", step.name, run.pk)
            _finish_step(
                step,
                StepStatus.FAILED,
                str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}",
            )
    run.refresh_from_db(fields=["cancel_requested", "error"])
    _finish_run(run, succeeded=False, cancelled=run.cancel_requested, error=run.error)


def _close_orphaned(run_id: Any, owner: str, silent: float) -> None:
    """The reaper's end of a run whose owning process went silent: its running step fails, naming the process;
    the run's cleanup steps go to a worker. A run its user had asked to cancel ends CANCELLED."""
    reason = f"{owner} stopped without finishing (no sign of life for {silent:.0f}s); the run is closed, not resumed"
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
            return
        for step in RunStep.objects.filter(
            run_id=run.pk, phase=StepPhase.MAIN, status__in=[StepStatus.RUNNING, StepStatus.WAITING]
        ):
            _finish_step(step, StepStatus.FAILED, reason)
        _begin_cleanup(None, run, cancelled=run.cancel_requested, reason=reason)
