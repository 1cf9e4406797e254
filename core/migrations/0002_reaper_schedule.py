from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Workflow reaper: resume runs whose worker went silent"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="core.reap_stale_runs",
        every_seconds=60,
        description="Finds active runs without a heartbeat for WORKFLOW_STALE_AFTER seconds and resumes them.",
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
