from django.db import migrations

from core.schedules import ensure_interval_task, remove_task

SWEEP = "Webhooks: dispatch new events and resend due deliveries"
CLEANUP = "Events: delete events older than EVENTS_RETENTION_DAYS"


def forwards(apps, schema_editor):
    ensure_interval_task(
        apps,
        name=SWEEP,
        task="webhooks.sweep",
        every_seconds=10,
        description="Dispatches events no commit woke the dispatcher for, retries deliveries whose time has come and "
        "resends those a dead worker left leased.",
    )
    ensure_interval_task(
        apps,
        name=CLEANUP,
        task="webhooks.cleanup",
        every_seconds=3600,
        description="Deletes outbox events (with their deliveries) older than EVENTS_RETENTION_DAYS; events still "
        "waiting for a delivery are kept.",
    )


def backwards(apps, schema_editor):
    remove_task(apps, name=SWEEP)
    remove_task(apps, name=CLEANUP)


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
