"""Parse Node objects from files and print the inventory (the same parser the service uses)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from hardware.inventory import parse_nodes
from hardware.nodefiles import load_node_objects


def _text(value) -> str:
    return "-" if value is None else str(value)


class Command(BaseCommand):
    help = "Read Node objects (YAML or JSON: one object, a list, or a kind: List) and print their inventory."

    def add_arguments(self, parser) -> None:
        parser.add_argument("files", nargs="+", help="files with Node objects (`kubectl get nodes -o yaml`)")
        parser.add_argument("--json", action="store_true", help="print a JSON list (default: a table)")

    def handle(self, *args, files: list[str], **options) -> None:
        nodes = []
        for path in files:
            try:
                nodes.extend(load_node_objects(path))
            except (OSError, ValueError) as exc:
                raise CommandError(f"{path}: {exc}") from None
        inventory = [inv.to_dict() for inv in parse_nodes(nodes)]
        if options["json"]:
            self.stdout.write(json.dumps(inventory, indent=2))
            return
        rows = [("NODE", "READY", "SCHED", "ACCEL", "MODEL", "COUNT", "MEM/DEV MiB", "CPU", "CORES", "FLAGS")]
        for n in inventory:
            rows.append(
                (
                    n["node"], str(n["ready"]), str(n["schedulable"]), n["accelerator_type"],
                    n["accelerator_model"] or "-", _text(n["accelerator_count"]),
                    str(n["accelerator_memory_mib"] or "-"),
                    n["cpu_model"] or "-", str(n["cpu_cores"] or "-"), ",".join(n["cpu_flags"] or []) or "-",
                )
            )  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        for n in inventory:
            for note in n["notes"]:
                self.stdout.write(f"note: {n['node']}: {note}")
