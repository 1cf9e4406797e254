"""The Celery application.

Tasks live in each app's ``tasks.py`` (autodiscovered). Beat schedules are rows of django-celery-beat, created
by data migrations and editable in the admin (Periodic tasks), never hard-coded here.
"""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")

app = Celery("budcluster")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _import_before_fork(**kwargs) -> None:
    """Import what every step needs but its library loads lazily (httpx imports httpcore on its first client)
    once in the parent, so the forked pool processes share it instead of each paying for it on its first step.
    Only pure-Python modules: the Helm engine's native library starts threads and must load after the fork."""
    import httpcore  # noqa: F401
