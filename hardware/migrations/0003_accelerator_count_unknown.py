"""A node's accelerator count may be unknown (null): a labeller saw devices, but neither the device plugin's
capacity nor a count label says how many. Existing rows keep their counts."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("hardware", "0002_refresh_schedule"),
    ]

    operations = [
        migrations.AlterField(
            model_name="node",
            name="accelerator_count",
            field=models.IntegerField(
                default=0,
                help_text="Whole devices; empty when a labeller saw devices that nothing counted",
                null=True,
            ),
        ),
    ]
