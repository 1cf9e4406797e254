"""Register a cluster from a kubeconfig file and follow the registration run until it ends."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from clusters import services
from core.choices import RunStatus
from core.progress import follow_run


class Command(BaseCommand):
    help = "Register a cluster: validate the kubeconfig, store it encrypted, verify, and follow the run."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("kubeconfig", help="path to the kubeconfig file")
        parser.add_argument("--context", help="context to use (default: current-context)")
        parser.add_argument("--ingress-url", default="")
        parser.add_argument("--no-wait", action="store_true", help="start the run and return")
        parser.add_argument("--timeout", type=float, default=900.0)

    def handle(
        self, *args, name: str, kubeconfig: str, context: str | None, ingress_url: str, **options
    ) -> None:
        path = Path(kubeconfig)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            cluster, run = services.register_cluster(
                name=name, kubeconfig=path.read_bytes(), context=context, ingress_url=ingress_url
            )
        except services.RegistrationRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"cluster {cluster.name} (id {cluster.pk}); registration run {run.pk}")
        if options["no_wait"]:
            return
        run = follow_run(run, self.stdout, timeout=options["timeout"])
        cluster.refresh_from_db()
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"registration {run.status}: {run.error or cluster.reason}")
        self.stdout.write(self.style.SUCCESS(f"cluster {cluster.name} is {cluster.status}"))
