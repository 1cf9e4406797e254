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
