"""Register the local devcluster as a cluster, or give the existing record the devcluster's new kubeconfig.

The devcluster keeps its state in memory and makes a new CA and token every time it starts, so the kubeconfig
stored at the previous ``make run`` no longer opens it; this command (called by ``scripts/run.sh``) registers
the cluster the first time and replaces the stored kubeconfig (re-verifying it) afterwards. It does not wait.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from clusters import services
from clusters.models import Cluster


class Command(BaseCommand):
    help = "Register the devcluster kubeconfig as cluster NAME (or refresh its kubeconfig); does not wait."

    def add_arguments(self, parser) -> None:
        parser.add_argument("kubeconfig", help="kubeconfig written by `python -m devcluster serve`")
        parser.add_argument("--name", default="devcluster")

    def handle(self, *args, kubeconfig: str, name: str, **options) -> None:
        path = Path(kubeconfig)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        cluster = Cluster.objects.filter(name=name).first()
        if cluster is None:
            call_command("register_cluster", name, str(path), "--no-wait", stdout=self.stdout)
            return
        try:
            run = services.replace_kubeconfig(cluster, path.read_bytes())
        except services.RegistrationRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"cluster {name} (id {cluster.pk}): kubeconfig refreshed; verification run {run.pk}"
        )
