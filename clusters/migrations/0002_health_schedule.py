from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Cluster health sweep"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="clusters.check_clusters",
        every_seconds=60,
        description="Checks every cluster concurrently; moves AVAILABLE/NOT_AVAILABLE/ERROR and records events.",
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("clusters", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
