"""A live deployment's name is unique on its cluster (deleted ones free their name).

Existing duplicates stop the migration with the list of them and how to resolve them, instead of being renamed:
a deployment's name is how people, scripts and ``manage.py benchmark NAME`` find it, and it is also the name of its
runtime release on the cluster (``charts.runtime_release_name``: the Kubernetes Deployment and Service), so a
rename here would cut the record off from what runs. Which one keeps the name is the operator's decision; the
check lists each duplicate's id, status and creation time to make it.
"""

from django.db import migrations, models
from django.db.models import Count, Q


def refuse_duplicate_names(apps, schema_editor):
    Deployment = apps.get_model("deployments", "Deployment")
    live = Deployment.objects.using(schema_editor.connection.alias).exclude(status="deleted")
    clashes = list(
        live.values("cluster_id", "name")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .order_by("cluster_id", "name")
    )
    if not clashes:
        return
    lines = []
    for clash in clashes:
        rows = live.filter(cluster_id=clash["cluster_id"], name=clash["name"]).order_by("created_at")
        listed = ", ".join(f"id {d.pk} ({d.status}, created {d.created_at:%Y-%m-%d %H:%M})" for d in rows)
        lines.append(f"  cluster {clash['cluster_id']}, name {clash['name']!r}: {listed}")
    raise RuntimeError(
        "Deployment names must now be unique per cluster among deployments that are not deleted, and these "
        "clash:\n" + "\n".join(lines) + "\nWith the version running now, delete all but one of each "
        "(DELETE /deployments/{id}, or the admin's Delete action); a name cannot be changed in place, as it also "
        "names the runtime on the cluster. Then run `manage.py migrate` again."
    )


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0005_runtime_values_engine_args"),
    ]

    operations = [
        migrations.RunPython(refuse_duplicate_names, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.UniqueConstraint(
                condition=~Q(status="deleted"),
                fields=("cluster", "name"),
                name="deployment_unique_live_name",
                violation_error_message="A live deployment with this name exists on this cluster.",
            ),
        ),
    ]
