#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
    from django.core.management import execute_from_command_line

    from audit.context import command

    # What a command changes is audited as the OS user's act (source "command"), written when it ends.
    with command(sys.argv[1] if len(sys.argv) > 1 else None):
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
