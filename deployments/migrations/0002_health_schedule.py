from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Deployment health"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="deployments.check_deployments",
        every_seconds=180,
        description=(
            "Checks ready replicas, restarts and the endpoint of every serving deployment; moves RUNNING/DEGRADED/"
            "FAILED with events and upserts workers."
        ),
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
