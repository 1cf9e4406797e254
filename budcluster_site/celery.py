"""The Celery application.

Tasks live in each app's ``tasks.py`` (autodiscovered). Beat schedules are rows of django-celery-beat, created
by data migrations and editable in the admin (Periodic tasks), never hard-coded here.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")

app = Celery("budcluster")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
