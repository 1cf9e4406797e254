"""What every benchmark script needs before it measures: its own PostgreSQL database, Django set up and
migrated, and crypto keys (generated only if missing); and, for the scripts that start servers or workers in their
own process group (``start_new_session=True``), stopping the group and reading its CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def ensure_database() -> None:
    """Create the database DATABASE_URL names if it does not exist yet (benchmarks keep their own)."""
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    """Database, ``django.setup()``, migrations and keys: call before importing models."""
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    from core import crypto

    call_command("migrate", verbosity=0)
    if not crypto.symmetric_key_path().exists():
        call_command("generate_keys", "--if-missing", verbosity=0)


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads (a server and its workers), SIGKILL it after ``timeout``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (a server or worker and its children),
    from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
