from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

NAME = "Audit log retention"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=NAME,
        task="audit.purge_expired",
        every_seconds=86400,
        description="Deletes audit entries older than AUDIT_RETENTION_DAYS (0: keeps them all), in batches.",
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
