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
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def tf_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLI config installing the null provider from a local filesystem mirror (no registry access)."""
    return provider_mirror_config(tmp_path_factory.mktemp("tf-toolchain"))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name for one test's state; dropped afterwards whatever happened."""
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def read_state(schema: str) -> list[tuple[str, str]]:
    """Rows (workspace name, state JSON) the pg backend keeps in ``<schema>.states``."""
    with psycopg.connect(PG_URL) as conn:
        rows = conn.execute(
            sql.SQL("SELECT name, data FROM {}.states ORDER BY name").format(sql.Identifier(schema))
        ).fetchall()
    return [(name, data) for name, data in rows]
