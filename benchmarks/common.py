"""What every benchmark script needs before it measures: its own PostgreSQL database, Django set up and
migrated, and crypto keys (generated only if missing)."""

from __future__ import annotations

import os


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
