"""Which models the audit log follows, which of their fields it leaves out, and how values are masked.

Only models people change by hand are followed: clusters, deployments, cloud credentials, provisionings, runs
(their start and cancel), users, groups, API tokens and the beat schedules. The logs a worker appends to (events,
steps, releases, node inventory, benchmarks' results) are not: they are what the workflow did, recorded by the
workflow itself. Fields a worker or a beat keeps moving on a followed model (``last_checked``, heartbeats,
``autoscaling_state``) are left out too, so an entry shows what the person changed.

A value is masked as ``***`` (and only whether it was set stays visible) when its field is encrypted
(``core.fields``) or its name looks like a secret (:data:`SECRET_NAME`); inside JSON values, under any key that
looks like one, at any depth (a deployment's ``env``, S3 settings).
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.apps import apps
from django.db import models

from core.fields import EncryptedFieldMixin

MASK = "***"
SECRET_NAME = re.compile(r"token|secret|passw|key|kubeconfig|credential|digest|salt|cert|auth", re.IGNORECASE)
# A long value (a manifest pasted into a label, a big JSON document) is cut: the log says what changed, it is not a
# copy of the data.
MAX_TEXT = 2000


@dataclass(frozen=True)
class Followed:
    exclude: frozenset[str] = frozenset()
    # When set, only these fields are compared (runs: everything else on them is the workflow's).
    only: frozenset[str] | None = None
    # URLs that may carry a credential in their path or query (a Slack webhook's): shown as scheme://host/***.
    urls: frozenset[str] = frozenset()

    def includes(self, name: str) -> bool:
        return name not in self.exclude and (self.only is None or name in self.only)


_TIMESTAMPS = frozenset({"created_at", "updated_at"})
FOLLOWED: dict[str, Followed] = {
    "clusters.Cluster": Followed(_TIMESTAMPS | {"last_checked", "last_retry_at", "not_available_since"}),
    "deployments.Deployment": Followed(
        _TIMESTAMPS | {"autoscaling_state", "last_checked", "ready_replicas", "placement", "model_spec"}
    ),
    "provisioning.CloudCredential": Followed(_TIMESTAMPS),
    "provisioning.Provisioning": Followed(_TIMESTAMPS | {"plan", "plan_summary", "outputs", "applied_at"}),
    # A run's creation is the action it started (``audit.context``); afterwards only a cancel is a person's.
    "core.Run": Followed(only=frozenset({"cancel_requested"})),
    "auth.User": Followed(frozenset({"last_login"})),
    "auth.Group": Followed(),
    "knox.AuthToken": Followed(),
    "django_celery_beat.PeriodicTask": Followed(
        frozenset({"last_run_at", "total_run_count", "date_changed"})
    ),
    "django_celery_beat.IntervalSchedule": Followed(),
    "django_celery_beat.CrontabSchedule": Followed(),
    "django_celery_beat.ClockedSchedule": Followed(),
    "django_celery_beat.SolarSchedule": Followed(),
    "webhooks.Subscription": Followed(
        _TIMESTAMPS | {"consecutive_failures", "disabled_reason"}, urls=frozenset({"url"})
    ),
}


def followed_models() -> list[type[models.Model]]:
    """The installed models of :data:`FOLLOWED` (an app not installed is skipped)."""
    found = []
    for label in FOLLOWED:
        try:
            found.append(apps.get_model(label))
        except LookupError:
            continue
    return found


def rule(model: type[models.Model]) -> Followed | None:
    return FOLLOWED.get(model._meta.label)


def object_type(model: type[models.Model]) -> str:
    """``app_label.model`` as the runs API spells a subject's type (``clusters.cluster``)."""
    return model._meta.label_lower


def tracked_fields(model: type[models.Model]) -> list[models.Field]:
    """The concrete fields compared on ``model`` (foreign keys by their id)."""
    followed = rule(model) or Followed()
    return [f for f in model._meta.concrete_fields if not f.primary_key and followed.includes(f.name)]


def describe(instance: models.Model) -> str:
    """``str(instance)`` with the values of its secret fields cut out (knox's token shows its digest)."""
    text = str(instance)
    for f in type(instance)._meta.concrete_fields:
        if is_secret(f):
            value = f.value_from_object(instance)
            if isinstance(value, str) and len(value) >= 4:
                text = text.replace(value, MASK)
    return text


def object_id(model: type[models.Model], pk: object) -> str:
    """The id an entry names; empty when the primary key itself is a secret-looking field (knox's digest)."""
    return "" if is_secret(model._meta.pk) else str(pk)


def is_secret(field: models.Field) -> bool:
    return isinstance(field, EncryptedFieldMixin) or bool(SECRET_NAME.search(field.name))


# Compares secrets without keeping them: a keyed hash under a key that exists only in this process's memory.
_FINGERPRINT_KEY = os.urandom(32)


class Masked(str):
    """``***`` that still tells whether two secrets differ: equal only when the values were (a keyed hash of the
    value, never written anywhere; JSON sees a plain ``"***"``)."""

    def __new__(cls, value: Any) -> Masked:
        masked = super().__new__(cls, MASK)
        text = json.dumps(value, sort_keys=True, default=str).encode()
        masked.fingerprint = hmac.new(_FINGERPRINT_KEY, text, hashlib.sha256).digest()
        return masked

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Masked):
            return self.fingerprint == other.fingerprint
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


def mask(value: Any) -> Any:
    """A secret as the log shows it: whether it is set (None and "" stay), never what it is."""
    return value if value in (None, "") else Masked(value)


def shown(field: models.Field, value: Any) -> Any:
    """``value`` of ``field`` as the log shows it: JSON-safe, secrets masked, long text cut."""
    if is_secret(field):
        return mask(value)
    followed = rule(field.model)
    if followed is not None and field.name in followed.urls and value:
        parts = urlsplit(str(value))
        return f"{parts.scheme}://{parts.hostname or ''}/{MASK}"
    return jsonable(value)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` with secret-looking keys masked at any depth."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else f"{value[:MAX_TEXT]}… ({len(value)} characters)"
    if isinstance(value, dict):
        return {str(k): (mask(v) if SECRET_NAME.search(str(k)) else jsonable(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return jsonable(str(value))
