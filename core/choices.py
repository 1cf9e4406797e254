"""Status choices of the workflow engine, with the transitions each may take.

RunStatus::

    PENDING ──► RUNNING ──► SUCCEEDED
                   │
                   ├──► CLEANING_UP ──► FAILED | CANCELLED     (compensating cleanup steps run first)
                   └──► FAILED | CANCELLED                     (no cleanup steps declared)
    PENDING ──► CLEANING_UP ──► CANCELLED                      (cancelled before the first step started: main
                                                               steps skipped, cleanup steps still run)

StepStatus::

    PENDING ──► RUNNING ──► SUCCEEDED | FAILED | CANCELLED
                  ▲   │
                  │   ▼
                 WAITING        (a poll step between checks, or a step waiting to retry)
    PENDING ──► SKIPPED         (cleanup steps of a run that succeeded; steps after a failure)

Every transition is a compare-and-set UPDATE (``filter(pk=…, status=old).update(status=new)``): zero rows
updated means another worker owns the row, and the caller backs off.
"""

from django.db import models


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    CLEANING_UP = "cleaning_up", "Cleaning up"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def active(cls) -> frozenset[str]:
        return frozenset({cls.PENDING, cls.RUNNING, cls.CLEANING_UP})

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})


class StepStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"

    @classmethod
    def active(cls) -> frozenset[str]:
        return frozenset({cls.PENDING, cls.RUNNING, cls.WAITING})

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.SKIPPED})


class StepPhase(models.TextChoices):
    MAIN = "main", "Main"
    CLEANUP = "cleanup", "Cleanup"
