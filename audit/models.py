"""The audit log: one row per thing a person did, written by ``audit.context`` and never changed afterwards."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from .choices import Source


class AuditEntry(models.Model):
    """Who did what to which object, from where, and what changed (secrets masked as ``***``).

    The actor is kept as an id and a name, not a foreign key: deleting a user keeps the history of what they did
    (and their own deletion's entry). ``changes`` is ``{field: [before, after]}``; a created object has ``null``
    before, a deleted one ``null`` after. ``run_id`` names the run an action started (a deletion that a worker
    carries out later, for one): the entry records who asked for it when they asked."""

    time = models.DateTimeField(default=timezone.now, db_index=True)
    actor_id = models.BigIntegerField(
        null=True, blank=True, help_text="The user's id (kept if the user goes)"
    )
    actor_name = models.CharField(
        max_length=150, blank=True, help_text="Username, or the OS user of a management command"
    )
    source = models.CharField(max_length=10, choices=Source.choices)
    action = models.CharField(max_length=100, help_text="e.g. cluster.delete, deployment.update, user.create")
    object_type = models.CharField(
        max_length=100, blank=True, help_text="app_label.model, e.g. clusters.cluster"
    )
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="{field: [before, after]}, secrets masked")
    details = models.JSONField(default=dict, blank=True, help_text="The started run's parameters, masked")
    run_id = models.UUIDField(null=True, blank=True, help_text="The run this action started")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    request = models.CharField(max_length=300, blank=True, help_text="Method and path, or the command's name")

    class Meta:
        ordering = ("-time", "-id")
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            models.Index(fields=["actor_name", "time"], name="audit_actor_time"),
            models.Index(fields=["action", "time"], name="audit_action_time"),
        ]

    def __str__(self) -> str:
        who = self.actor_name or "someone"
        target = f"{self.object_type} {self.object_id}".strip()
        return f"{self.time:%Y-%m-%d %H:%M:%S} {who} {self.action} {target}".rstrip()
