"""Fixtures for the provisioning flow: the offline Terraform toolchain for worker processes, a devcluster
standing in for the cloud, and the local module selected with PROVISIONING_MODULE_OVERRIDE (a test aid).

The Celery worker is a subprocess started once per session and inherits this process's environment, so the
CLI configuration that installs the null provider from a local mirror (no registry access) is exported here,
at collection time, before any worker starts. It only affects ``hashicorp/null``, and it replaces any
``TF_CLI_CONFIG_FILE`` the shell set: the tests never reach a registry, whatever the machine's configuration.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devcluster.testing import devcluster_fixture
from provisioning.toolchain import provider_mirror_config

REPO = Path(__file__).resolve().parents[2]
os.environ["TF_CLI_CONFIG_FILE"] = str(provider_mirror_config(REPO / "var" / "test-terraform" / "toolchain"))

dc = devcluster_fixture(name="dc", nodes="cpu-small", clusters=3, scope="module")


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


@pytest.fixture
def local_module(settings, dc):
    """Point provisioning at terraform/testing/local-cluster; its "cluster" is a devcluster virtual cluster.

    Returns a function selecting which virtual cluster (and how slow each resource is)."""

    def use(cluster: str, *, delay: int = 0) -> dict:
        ca = (
            dc.kubeconfig(cluster)["clusters"][0]["cluster"].get("certificate-authority-data")
            or base64.b64encode(dc.ca_pem).decode()
        )
        variables = {
            "api_server": dc.cluster_url(cluster),
            "ca_data": ca,
            "token": dc.token(cluster),
            "resource_delay_seconds": delay,
            # The network resource prints this variable while it is created: a provider echoing a credential.
            "echo_env_var": "AWS_SECRET_ACCESS_KEY",
        }
        settings.PROVISIONING_MODULE_OVERRIDE = "terraform/testing/local-cluster"
        settings.PROVISIONING_MODULE_VARIABLES = variables
        return variables

    return use


def state_url() -> str:
    from tests.worker import test_database_url

    return test_database_url()


def schema_exists(name: str) -> bool:
    with psycopg.connect(state_url()) as conn:
        row = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [name]
        ).fetchone()
    return row is not None


def state_rows(name: str) -> list[tuple[str, str]]:
    with psycopg.connect(state_url()) as conn:
        return conn.execute(
            sql.SQL("SELECT name, data FROM {}.states").format(sql.Identifier(name))
        ).fetchall()


def advisory_locks() -> int:
    """Advisory locks held in the test database (the pg backend's state lock is one)."""
    with psycopg.connect(state_url()) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        ).fetchone()
    return count


def drop_schema(name: str) -> None:
    with psycopg.connect(state_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
