from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Deployment autoscaling"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="deployments.autoscale",
        every_seconds=15,
        description=(
            "Evaluates every deployment's autoscaling policy (metrics read from each replica's /metrics) and scales "
            "through the update run when the stabilisation windows and cooldowns allow; each decision is a "
            "deployment event. The interval is the shortest time between two decisions."
        ),
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0008_autoscaling"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
