"""Run the cluster health sweep now and print the transitions."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from clusters import services


class Command(BaseCommand):
    help = "Check every cluster now (the same sweep beat runs) and print status changes."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--timeout", type=float, default=None, help="per-cluster timeout in seconds")

    def handle(self, *args, timeout: float | None, **options) -> None:
        report = services.sweep(timeout=timeout)
        self.stdout.write(f"checked {report.checked} cluster(s) in {report.seconds:.2f}s")
        for name, old, new in report.transitions:
            self.stdout.write(f"  {name}: {old} → {new}")
        if not report.transitions:
            self.stdout.write("  no status changed")
