"""Default beat schedules, written as django-celery-beat rows by data migrations.

Schedules live in the database so operators can change or pause them in the admin (Periodic tasks); a migration
creates each default once and never overwrites an operator's edit.
"""

from __future__ import annotations


def ensure_interval_task(apps, *, name: str, task: str, every_seconds: int, description: str = "") -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    periodic_model = apps.get_model("django_celery_beat", "PeriodicTask")
    if periodic_model.objects.filter(name=name).exists():
        return
    interval, _ = interval_model.objects.get_or_create(every=every_seconds, period="seconds")
    periodic_model.objects.create(
        name=name, task=task, interval=interval, description=description, enabled=True
    )


def remove_task(apps, *, name: str) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=name).delete()


def set_interval_if_default(apps, *, name: str, old_seconds: int, new_seconds: int) -> None:
    """Move a periodic task from its previous default interval to a new one; an operator's own interval stays."""
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    periodic_model = apps.get_model("django_celery_beat", "PeriodicTask")
    task = periodic_model.objects.filter(
        name=name, interval__every=old_seconds, interval__period="seconds"
    ).first()
    if task is None:
        return
    task.interval, _ = interval_model.objects.get_or_create(every=new_seconds, period="seconds")
    task.save(update_fields=["interval"])
    # A historical model skips PeriodicTask.save()'s own bookkeeping: tell a running beat the schedule changed.
    from django.utils import timezone

    apps.get_model("django_celery_beat", "PeriodicTasks").objects.update_or_create(
        ident=1, defaults={"last_update": timezone.now()}
    )
