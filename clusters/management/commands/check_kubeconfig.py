"""``manage.py check_kubeconfig FILE [--context NAME]``: the registration API's static kubeconfig checks,
offline.

Runs exactly :func:`clusters.kubeconfig.validate_kubeconfig` with the same settings (size limit, loopback
switch) as the API, so an operator can see why an upload would be refused before sending it. Prints ``OK`` and
exits 0, or prints the reason and exits 1. ``-`` reads standard input. Nothing is stored, nothing is
contacted.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clusters.kubeconfig import KubeconfigError, max_bytes, validate_kubeconfig


class Command(BaseCommand):
    help = "Check a kubeconfig with the same static rules as cluster registration; prints OK or the reason."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="kubeconfig file, or - for standard input")
        parser.add_argument("--context", default=None, help="context to use instead of current-context")

    def handle(self, *args: Any, file: str, context: str | None = None, **options: Any) -> None:
        limit = max_bytes()
        try:
            if file == "-":
                raw = sys.stdin.buffer.read(limit + 1)
            else:
                with open(file, "rb") as fh:
                    raw = fh.read(
                        limit + 1
                    )  # one byte over the limit is enough to refuse; never read a huge file
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}", returncode=1) from None
        try:
            result = validate_kubeconfig(raw, context)
        except KubeconfigError as exc:
            raise CommandError(str(exc), returncode=1) from None
        if options.get("verbosity", 1) > 1:
            self.stdout.write(
                f"context {result.context_name}: cluster {result.cluster_name} at {result.server}, "
                f"user {result.user_name}"
            )
        self.stdout.write("OK")
