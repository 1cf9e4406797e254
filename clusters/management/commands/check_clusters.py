"""Run the cluster health sweep now and print the transitions.

A cluster whose API server BudCluster's own address guard refuses is not checked: that is this process's
configuration (typically ``BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS`` off here while the service runs with it on), not the
cluster's health, so its status is left alone and the command names it and exits with status 1.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

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
        if report.refused:
            self.stderr.write(
                "not checked: BudCluster's outbound-address guard refused to connect to these API servers in this "
                "process; their status is unchanged:"
            )
            for name, why in report.refused:
                self.stderr.write(f"  {name}: {why}")
            raise CommandError(
                f"{len(report.refused)} cluster(s) not checked: a configuration error of this process, not of the "
                "clusters (run the command with the settings the service has: see README, make run)"
            )
