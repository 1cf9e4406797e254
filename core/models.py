"""The workflow engine's records: a Run, its ordered RunSteps, and an append-only RunEvent log.

The database is the truth; Celery messages only say "look at step N of run R now". See ``core/workflow.py``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.urls import reverse
from django.utils import timezone

from .choices import RunStatus, StepPhase, StepStatus


def recorded_user(user):
    """The user to store as a row's creator or approver: None for anonymous requests and system callers."""
    return user if getattr(user, "is_authenticated", False) else None


class Run(models.Model):
    """One execution of a declared workflow (``kind``) on a subject (a cluster, a deployment, ...)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=100, db_index=True, help_text="Workflow name, e.g. cluster.register")
    title = models.CharField(max_length=200, blank=True)
    subject_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.SET_NULL)
    subject_id = models.CharField(max_length=64, blank=True, db_index=True)
    subject = GenericForeignKey("subject_type", "subject_id")
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=20, choices=RunStatus.choices, default=RunStatus.PENDING, db_index=True
    )
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    progress = models.FloatField(default=0.0, help_text="Percent complete, 0-100")
    eta = models.DateTimeField(null=True, blank=True, help_text="Estimated completion time")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from a worker")
    wake_at = models.DateTimeField(
        null=True, blank=True, help_text="When a waiting step's next check is due (the reaper allows for it)"
    )
    resumed_count = models.PositiveIntegerField(default=0)
    # The client's Idempotency-Key of the request that started the run (``core.api.idempotency``): a retried
    # request with the same key, by the same user, for the same kind of run answers with this run again.
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    accepted = models.JSONField(
        null=True,
        blank=True,
        encoder=DjangoJSONEncoder,
        help_text="The extra fields of the 202 answer that started the run, repeated to a retried request",
    )

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat")]
        constraints = [
            models.UniqueConstraint(
                fields=["created_by", "kind", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="run_unique_idempotency_key",
            )
        ]
        permissions = [
            ("cancel_run", "Can cancel a run"),
            ("approve_run", "Can approve a run waiting for it"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("run-detail", kwargs={"pk": self.pk})

    @property
    def is_active(self) -> bool:
        return self.status in RunStatus.active()


class RunStep(models.Model):
    """A step of a run. ``order`` is the position in the declared workflow (cleanup steps follow main ones)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    order = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    title = models.CharField(max_length=200)
    phase = models.CharField(max_length=10, choices=StepPhase.choices, default=StepPhase.MAIN)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0.0, help_text="0-1 within the step")
    message = models.TextField(blank=True)
    output = models.JSONField(default=dict, blank=True)
    eta_seconds = models.FloatField(
        default=1.0, help_text="Estimated duration, used for run progress and ETA"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True, help_text="A waiting step fails after this")
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First transient failure; retried until the transient window passes"
    )
    transient_failures = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("run", "order")
        constraints = [
            models.UniqueConstraint(fields=["run", "order"], name="runstep_unique_order"),
            models.UniqueConstraint(fields=["run", "name"], name="runstep_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.order}. {self.title} ({self.status})"


class RunEvent(models.Model):
    """Append-only log of what happened in a run; the API's event list and later webhooks read it."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    step = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, blank=True)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("run", "id")

    def __str__(self) -> str:
        return f"[{self.created_at:%H:%M:%S}] {self.step or 'run'} {self.status}: {self.message}"


class StatusEvent(models.Model):
    """Base of the append-only status logs of clusters and deployments (one row per transition or notice)."""

    kind = models.CharField(max_length=50)
    old_status = models.CharField(max_length=20, blank=True)
    new_status = models.CharField(max_length=20, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        abstract = True
        ordering = ("-created_at", "-id")


# --- the event outbox (core/events.py) -------------------------------------------------------------------------


class Event(models.Model):
    """One state change, written in the transaction that made it (transactional outbox), in CloudEvents 1.0 form.

    Order and the cursor: ``seq`` is taken at insert time, so two transactions can commit in the other order than
    their ``seq`` says, and a reader paging by ``seq`` would skip an event that committed late. ``position`` is
    therefore given after commit by one positioner at a time (``core.events.position_pending``): every committed
    row without a position gets the next numbers, in ``seq`` order. A row still uncommitted is invisible to the
    positioner and gets a later number once it commits, so a consumer paging by ``position`` never misses or
    repeats an event. Readers (``GET /events``, the webhook dispatcher) run the positioner before they read.
    """

    seq = models.BigAutoField(primary_key=True)
    id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False, help_text="CloudEvents id")
    position = models.BigIntegerField(
        null=True,
        blank=True,
        unique=True,
        help_text="Cursor order, given after commit (see the module docstring)",
    )
    type = models.CharField(max_length=120, db_index=True, help_text="e.g. io.bud.cluster.status.changed")
    source = models.CharField(max_length=200)
    subject = models.CharField(max_length=200, db_index=True, help_text="e.g. clusters/12")
    time = models.DateTimeField(default=timezone.now, db_index=True)
    data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ("seq",)
        indexes = [
            models.Index(
                fields=["seq"], condition=models.Q(position__isnull=True), name="event_unpositioned"
            ),
            models.Index(fields=["subject", "position"], name="event_subject_position"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.subject} #{self.position or '-'}"

    def cloudevent(self) -> dict:
        """The event in CloudEvents 1.0 JSON form (structured mode), as the API and webhooks send it."""
        return {
            "specversion": "1.0",
            "id": str(self.id),
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": self.data,
        }


class EventCounter(models.Model):
    """The last position given to an event (one row). Positions never go back, even when retention has deleted
    every event, so a reader's cursor stays valid forever."""

    last = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"last event position {self.last}"
