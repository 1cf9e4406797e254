from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Deployment leftovers: finish pending cleanups"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="deployments.finish_pending_cleanups",
        every_seconds=60,
        description=(
            "Removes the namespace, Secrets and PVC a failed deploy left on a cluster that was unreachable during "
            "its cleanup, once the cluster is available again (a deployment.cleanup run each)."
        ),
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0006_deployment_unique_live_name"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
