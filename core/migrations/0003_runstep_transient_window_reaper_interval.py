from django.db import migrations, models

REAPER = "Workflow reaper: resume runs whose worker went silent"


def reaper_every_5s(apps, schema_editor):
    """The reaper went from every 60 s to every 5 s (a dead worker's run resumes within 25 s, not 150 s). An
    interval an operator changed in the admin is kept."""
    from core.schedules import set_interval_if_default

    set_interval_if_default(apps, name=REAPER, old_seconds=60, new_seconds=5)


def reaper_every_60s(apps, schema_editor):
    from core.schedules import set_interval_if_default

    set_interval_if_default(apps, name=REAPER, old_seconds=5, new_seconds=60)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_reaper_schedule"),
    ]

    operations = [
        migrations.AddField(
            model_name="runstep",
            name="failing_since",
            field=models.DateTimeField(
                blank=True,
                help_text="First transient failure; retried until the transient window passes",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="runstep",
            name="transient_failures",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(reaper_every_5s, reaper_every_60s),
    ]
