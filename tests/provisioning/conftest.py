"""Fixtures for the Terraform runner tests: the offline toolchain, a throwaway state schema, the local module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from provisioning.toolchain import provider_mirror_config

REPO = Path(__file__).resolve().parents[2]
LOCAL_MODULE = REPO / "terraform" / "testing" / "local-cluster"


@pytest.fixture(scope="session")
def pg_url(django_db_setup) -> str:
    """This session's own test database for the pg backend's state. Not a shared database: the backend takes
    advisory locks (creating a workspace takes the fixed lock id -1), which are per database, so two test
    sessions (xdist workers, another checkout's run) sharing one would refuse each other's plans."""
    from tests.worker import test_database_url

    return test_database_url()


@pytest.fixture(scope="session")
def tf_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLI config installing the null provider from a local filesystem mirror (no registry access)."""
    return provider_mirror_config(tmp_path_factory.mktemp("tf-toolchain"))


@pytest.fixture
def pg_schema(pg_url) -> Iterator[str]:
    """A fresh schema name for one test's state; dropped afterwards whatever happened."""
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def read_state(schema: str) -> list[tuple[str, str]]:
    """Rows (workspace name, state JSON) the pg backend keeps in ``<schema>.states``."""
    from tests.worker import test_database_url

    with psycopg.connect(test_database_url()) as conn:
        rows = conn.execute(
            sql.SQL("SELECT name, data FROM {}.states ORDER BY name").format(sql.Identifier(schema))
        ).fetchall()
    return [(name, data) for name, data in rows]
