"""List clusters with their status."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from clusters.models import Cluster


class Command(BaseCommand):
    help = "List registered clusters: name, status, platform, server, last check."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--status", help="only clusters with this status")

    def handle(self, *args, status: str | None, **options) -> None:
        qs = Cluster.objects.defer("kubeconfig").order_by("name")
        if status:
            qs = qs.filter(status=status)
        rows = [("NAME", "STATUS", "PLATFORM", "SERVER", "LAST CHECKED")]
        for c in qs:
            checked = c.last_checked.strftime("%Y-%m-%d %H:%M:%S") if c.last_checked else "-"
            rows.append((c.name, c.status, c.platform, c.server_url, checked))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
