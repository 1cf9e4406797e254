"""The audit context: who is acting, from where, and what they changed so far; written out when they are done.

A context exists only while a person acts: an HTTP request with an unsafe method (``audit.middleware``, API and
admin alike) or a management command (``manage.py`` opens one around the command). Celery workers and beat have
none, and a task run eagerly inside a request leaves it (``audit.capture``), so what workflows do is never
audited here: runs and events record it.

Inside a context, ``audit.capture``'s model signals hand over each followed object's change (fields before and
after) and each run started, through ``transaction.on_commit``: a change whose transaction (or savepoint) rolls
back never reaches the context, so no entry claims it. When the request or command ends, :meth:`AuditContext.flush`
writes one :class:`~audit.models.AuditEntry` per object:

* an object a run was started on (``DELETE /clusters/5`` starts ``cluster.delete``, a worker deletes the row
  later): action = the run's kind, ``run_id`` set, with the fields the request changed on it;
* any other object created, changed or deleted: ``<model>.create|update|delete`` with the changed fields;
* nothing of that, but the request changed a followed table another way (a ``QuerySet.update``, as a run's
  cancel or a plan's approval do) and succeeded: one entry named after the view (``run.cancel``,
  ``run.approve``, an admin action such as ``cluster.check_health_now``) on the object its URL names, fields compared
  before and after the request.

Entries are written after the change committed, not in its transaction: the services own their transactions, and a
request's entries group changes from several. The price is a narrow window (the process dies between the commit
and the end of the request) in which a change has no entry. A refused request (4xx) changed nothing and writes
nothing; a failure writing the log is logged and never turns a committed change into an error answer.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from . import registry
from .choices import Source

logger = logging.getLogger(__name__)

current: ContextVar[AuditContext | None] = ContextVar("audit_context", default=None)

# Commands that serve requests (each audited by the middleware) rather than act themselves.
UNAUDITED_COMMANDS = frozenset({"runserver", "help"})


@dataclass
class Change:
    """What happened to one object within a context (several saves of it merge into one change)."""

    model: type[models.Model]
    pk: str
    repr: str = ""
    created: bool = False
    deleted: bool = False
    fields: dict[str, list[Any]] = field(default_factory=dict)  # name -> [before, after], shown values

    @property
    def key(self) -> tuple[str, str]:
        return registry.object_type(self.model), self.pk

    def merge(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        for name in before.keys() | after.keys():
            old, new = before.get(name), after.get(name)
            if name in self.fields:
                self.fields[name][1] = new  # the first "before" stands, the last "after" wins
            else:
                self.fields[name] = [old, new]

    def diff(self) -> dict[str, list[Any]]:
        return {name: pair for name, pair in sorted(self.fields.items()) if pair[0] != pair[1]}


@dataclass
class RunStarted:
    run_id: str
    kind: str
    subject_type: str  # app_label.model, "" without a subject
    subject_id: str
    params: dict


@dataclass
class ViewTarget:
    """The object a request's URL names, read before the view ran (for entries named after the view)."""

    action: str
    model: type[models.Model] | None = None
    pk: str = ""
    before: dict[str, Any] | None = None


@dataclass
class AuditContext:
    source: str
    request: Any = None  # the HttpRequest (its user is read when writing: DRF authenticates inside the view)
    actor_id: int | None = None
    actor_name: str = ""
    source_ip: str | None = None
    label: str = ""
    changes: dict[tuple[str, str], Change] = field(default_factory=dict)
    runs: list[RunStarted] = field(default_factory=list)
    # A followed table was written by a statement no signal reports (QuerySet.update) and committed.
    wrote: bool = False
    targets: list[ViewTarget] = field(default_factory=list)

    # --- filled through transaction.on_commit by audit.capture ----------------------------------------------
    def record(
        self, model, pk, repr_: str, before: dict, after: dict, *, created=False, deleted=False
    ) -> None:
        key = (registry.object_type(model), str(pk))
        change = self.changes.get(key)
        if change is None:
            change = self.changes[key] = Change(model=model, pk=str(pk), created=created)
        change.deleted = change.deleted or deleted
        change.repr = repr_ or change.repr
        change.merge(before, after)

    def record_run(self, started: RunStarted) -> None:
        self.runs.append(started)

    def mark_wrote(self) -> None:
        self.wrote = True

    # --- writing --------------------------------------------------------------------------------------------
    def entries(self, *, succeeded: bool, request_id: str = "") -> list[Any]:
        from .models import AuditEntry

        actor_id, actor_name = self._actor()
        common = {
            "actor_id": actor_id,
            "actor_name": actor_name,
            "source": self.source,
            "source_ip": self.source_ip,
            "request_id": request_id[:64],
            "request": self.label[:300],
        }
        rows = []
        changes = dict(self.changes)
        for run in self.runs:
            key = (run.subject_type, run.subject_id) if run.subject_type else ("core.run", run.run_id)
            change = changes.pop(key, None)
            rows.append(
                AuditEntry(
                    action=run.kind[:100],
                    object_type=key[0],
                    object_id=key[1],
                    object_repr=(change.repr if change else _repr_of(*key))[:200],
                    changes=change.diff() if change else {},
                    details={"params": registry.jsonable(run.params)},
                    run_id=run.run_id,
                    **common,
                )
            )
        for change in changes.values():
            diff = change.diff()
            if change.created and change.deleted:
                continue  # made and removed within one request: nothing of it is left to account for
            verb = "delete" if change.deleted else "create" if change.created else "update"
            if verb == "update" and not diff:
                continue
            rows.append(
                AuditEntry(
                    action=f"{change.model._meta.model_name}.{verb}",
                    object_type=change.key[0],
                    object_id=registry.object_id(change.model, change.pk),
                    object_repr=change.repr[:200],
                    changes=diff,
                    **common,
                )
            )
        if not rows and self.wrote and succeeded:
            rows.extend(self._view_entries(common))
        return rows

    def flush(self, *, succeeded: bool, request_id: str = "") -> int:
        """Write this context's entries; returns how many. Never raises (see the module docstring)."""
        from .models import AuditEntry

        try:
            rows = self.entries(succeeded=succeeded, request_id=request_id)
            if rows:
                AuditEntry.objects.bulk_create(rows)
            return len(rows)
        except Exception:
            logger.exception("the audit log could not be written for %s", self.label or self.source)
            return 0

    def _actor(self) -> tuple[int | None, str]:
        user = getattr(self.request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            return user.pk, user.get_username()[:150]
        return self.actor_id, self.actor_name

    def _view_entries(self, common: dict) -> list[Any]:
        from .models import AuditEntry

        rows = []
        for target in self.targets:
            diff: dict[str, list[Any]] = {}
            repr_ = ""
            if target.model is not None and target.pk:
                after, repr_ = snapshot_of(target.model, target.pk)
                if target.before is not None and after is not None:
                    diff = {
                        k: [target.before.get(k), after.get(k)]
                        for k in sorted(after)
                        if target.before.get(k) != after.get(k)
                    }
            rows.append(
                AuditEntry(
                    action=target.action[:100],
                    object_type=registry.object_type(target.model) if target.model else "",
                    object_id=registry.object_id(target.model, target.pk)[:64]
                    if target.model
                    else target.pk[:64],
                    object_repr=repr_[:200],
                    changes=diff,
                    **common,
                )
            )
        return rows


def snapshot(instance: models.Model, names: set[str] | None = None) -> dict[str, Any]:
    """The followed fields of ``instance`` as the log shows them (deferred fields left out: reading one would
    cost a query, and a save cannot have changed what it did not load)."""
    deferred = instance.get_deferred_fields()
    values = {}
    for f in registry.tracked_fields(type(instance)):
        if f.attname in deferred or (names is not None and f.name not in names and f.attname not in names):
            continue
        values[f.name] = registry.shown(f, f.value_from_object(instance))
    return values


def snapshot_of(model: type[models.Model], pk: Any) -> tuple[dict[str, Any] | None, str]:
    """The stored row's followed fields and its name, or (None, "") when it is gone or cannot be read."""
    try:
        obj = model._base_manager.filter(pk=pk).first()
    except Exception:  # a malformed id (the URL's), a key that no longer decrypts: nothing to compare
        return None, ""
    if obj is None:
        return None, ""
    return snapshot(obj), registry.describe(obj)


def _repr_of(object_type: str, pk: str) -> str:
    from django.apps import apps

    try:
        model = apps.get_model(object_type)
    except (LookupError, ValueError):
        return ""
    return snapshot_of(model, pk)[1]


def clean_ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return None


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


@contextlib.contextmanager
def activated(ctx: AuditContext | None) -> Iterator[AuditContext | None]:
    token = current.set(ctx)
    try:
        yield ctx
    finally:
        current.reset(token)


@contextlib.contextmanager
def command(name: str | None) -> Iterator[AuditContext | None]:
    """The context of a management command: the OS user acts, source ``command``; written when it ends (whether
    it succeeded or not: what it committed happened)."""
    if not name or name in UNAUDITED_COMMANDS or name.startswith("-"):
        yield None
        return
    ctx = AuditContext(source=Source.COMMAND, actor_name=os_user()[:150], label=f"manage.py {name}"[:300])
    try:
        with activated(ctx):
            yield ctx
    finally:
        ctx.flush(succeeded=True)
