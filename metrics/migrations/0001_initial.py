from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="SweepTiming",
            fields=[
                ("sweep", models.CharField(max_length=50, primary_key=True, serialize=False)),
                ("count", models.BigIntegerField(default=0)),
                ("sum_seconds", models.FloatField(default=0.0)),
                ("last_seconds", models.FloatField(default=0.0)),
                ("last_finished_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ("sweep",),
            },
        ),
    ]
