"""Model signals and a statement watcher that hand changes of followed models to the current audit context.

Receivers are connected per followed model (``audit.registry``), never for every sender: a ``post_delete``
receiver for all models would make Django fetch and signal each row of every bulk or cascading delete in the
project (no "fast delete"). Outside an audit context every receiver returns at once.

* ``pre_save`` reads the stored row (one query: the "before"), ``post_save`` compares it with the instance;
* ``pre_delete`` / ``post_delete``: the deleted object's values;
* ``m2m_changed`` of a followed model's many-to-many fields (a user's groups and permissions, a group's
  permissions): the related set before and after;
* a :class:`~core.models.Run` created is the start of the action a run carries out (``RunStarted``).

Each reaches the context through ``transaction.on_commit``: changes rolled back are never recorded.
:func:`watch_writes` (an ``execute_wrapper`` the middleware installs) notes a committed ``UPDATE``/``INSERT``/
``DELETE`` on a followed table that no signal reports (``QuerySet.update``). Celery's ``task_prerun`` leaves the
context for the task's duration, so a task run eagerly within a request is not audited as the person's act.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

from . import registry
from .context import AuditContext, RunStarted, current, snapshot, snapshot_of

_BEFORE = "_audit_before"
_M2M_BEFORE = "_audit_m2m_before"


def _context(raw: bool = False) -> AuditContext | None:
    return None if raw else current.get()


def _on_commit(func, *args, **kwargs) -> None:
    transaction.on_commit(lambda: func(*args, **kwargs))


def _pre_save(sender, instance, raw=False, update_fields=None, **_: Any) -> None:
    if _context(raw) is None or instance.pk is None or instance._state.adding:
        instance.__dict__.pop(_BEFORE, None)
        return
    before, _ = snapshot_of(sender, instance.pk)
    instance.__dict__[_BEFORE] = before


def _post_save(sender, instance, created=False, raw=False, update_fields=None, **_: Any) -> None:
    ctx = _context(raw)
    if ctx is None:
        return
    if sender._meta.label == "core.Run" and created:
        # A run's creation is the action it carries out; later saves of it compare only what a person changes.
        started = RunStarted(
            run_id=str(instance.pk),
            kind=instance.kind,
            subject_type=_content_type_label(instance.subject_type_id),
            subject_id=instance.subject_id or "",
            params=dict(instance.params or {}),
        )
        _on_commit(ctx.record_run, started)
        return
    names = set(update_fields) if update_fields else None
    after = snapshot(instance, names)
    before_row = instance.__dict__.pop(_BEFORE, None)
    known = before_row if before_row is not None and not created else {}
    before = {k: known.get(k) for k in after}
    _on_commit(ctx.record, sender, instance.pk, registry.describe(instance), before, after, created=created)


def _pre_delete(sender, instance, **_: Any) -> None:
    if _context() is not None:
        instance.__dict__[_BEFORE] = snapshot(instance)


def _post_delete(sender, instance, **_: Any) -> None:
    ctx = _context()
    if ctx is None or sender._meta.label == "core.Run":
        return
    before = instance.__dict__.pop(_BEFORE, None) or snapshot(instance)
    after = dict.fromkeys(before)
    _on_commit(ctx.record, sender, instance.pk, registry.describe(instance), before, after, deleted=True)


def _related_names(manager_values) -> list[str]:
    names = []
    for obj in manager_values:
        if obj._meta.label == "auth.Permission":
            names.append(f"{obj.content_type.app_label}.{obj.codename}")
        else:
            names.append(str(obj))
    return sorted(names)


def _m2m_changed(sender, instance, action, reverse, model, pk_set, **_: Any) -> None:
    ctx = _context()
    if ctx is None or reverse or registry.rule(type(instance)) is None:
        return
    field = next((f for f in type(instance)._meta.many_to_many if f.remote_field.through is sender), None)
    if field is None or not registry.rule(type(instance)).includes(field.name):
        return
    related = getattr(instance, field.name).all()
    if model._meta.label == "auth.Permission":
        related = related.select_related("content_type")
    if action.startswith("pre_"):
        instance.__dict__.setdefault(_M2M_BEFORE, {}).setdefault(field.name, _related_names(related))
        return
    before = instance.__dict__.get(_M2M_BEFORE, {}).pop(field.name, None)
    after = _related_names(related)
    if before is None or before == after:
        return
    _on_commit(
        ctx.record,
        type(instance),
        instance.pk,
        registry.describe(instance),
        {field.name: before},
        {field.name: after},
    )


def _content_type_label(content_type_id: int | None) -> str:
    if content_type_id is None:
        return ""
    from django.contrib.contenttypes.models import ContentType

    ct = ContentType.objects.get_for_id(content_type_id)
    return f"{ct.app_label}.{ct.model}"


# --- statements no signal reports -------------------------------------------------------------------------------
_WRITE = re.compile(r'^\s*(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+"?([A-Za-z0-9_]+)"?', re.IGNORECASE)


@cache
def followed_tables() -> frozenset[str]:
    return frozenset(m._meta.db_table for m in registry.followed_models())


def watch_writes(ctx: AuditContext):
    """An ``execute_wrapper`` noting committed writes to followed tables into ``ctx``."""

    def wrapper(execute, sql, params, many, context):
        match = _WRITE.match(sql) if isinstance(sql, str) else None
        if match and match.group(1) in followed_tables():
            transaction.on_commit(ctx.mark_wrote, using=context["connection"].alias)
        return execute(sql, params, many, context)

    return wrapper


# --- Celery: a task (even eager, inside a request) acts for the workflow, not for the person ----------------------
_suspended: dict[str, Any] = {}


def _task_prerun(task_id=None, **_: Any) -> None:
    if current.get() is not None and task_id:
        _suspended[task_id] = current.set(None)


def _task_postrun(task_id=None, **_: Any) -> None:
    token = _suspended.pop(task_id, None) if task_id else None
    if token is not None:
        current.reset(token)


def connect() -> None:
    from celery import signals as celery_signals

    for model in registry.followed_models():
        uid = f"audit:{model._meta.label}"
        pre_save.connect(_pre_save, sender=model, dispatch_uid=uid)
        post_save.connect(_post_save, sender=model, dispatch_uid=uid)
        if model._meta.label != "core.Run":
            pre_delete.connect(_pre_delete, sender=model, dispatch_uid=uid)
            post_delete.connect(_post_delete, sender=model, dispatch_uid=uid)
        for f in model._meta.local_many_to_many:
            m2m_changed.connect(_m2m_changed, sender=f.remote_field.through, dispatch_uid=f"{uid}.{f.name}")
    celery_signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="audit.task_prerun")
    celery_signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="audit.task_postrun")
