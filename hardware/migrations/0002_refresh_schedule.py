from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Node inventory refresh"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="hardware.refresh_all",
        every_seconds=600,
        description="Re-reads nodes and pods of every available cluster and updates the inventory (free GPUs).",
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("hardware", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
