"""What the service leaves on disk is private to its user, and an unauthenticated health check leaves nothing.

The embedded profile (``make run`` with nothing configured) keeps the SQLite database (API tokens, sessions),
the generated secret key, local Terraform state and the filesystem broker's messages under ``var/``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]

# What settings create when the embedded profile starts, then a write so SQLite opens its WAL.
_EMBEDDED_START = """
import json, django
django.setup()
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE canary (x text)")
    cursor.execute("INSERT INTO canary VALUES ('x')")
print(json.dumps(settings.CELERY_BROKER_TRANSPORT_OPTIONS))
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_profile_creates_var_private(tmp_path):
    var = tmp_path / "var"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY", "BUDCLUSTER_VAR_DIR")
    }
    env.update(
        BUDCLUSTER_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="budcluster_site.settings", PYTHONPATH=str(ROOT)
    )
    result = subprocess.run(
        [sys.executable, "-c", _EMBEDDED_START],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        umask=0o022,  # the usual shell umask: files would be world-readable unless the service says otherwise
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    options = json.loads(result.stdout.strip().splitlines()[-1])

    assert _mode(var) == 0o700
    database = var / "budcluster.sqlite3"
    assert _mode(database) == 0o600
    assert _mode(var / "secret-key") == 0o600
    for companion in (var / "budcluster.sqlite3-wal", var / "budcluster.sqlite3-shm"):
        if companion.exists():  # SQLite gives its WAL the database file's mode
            assert _mode(companion) == 0o600, companion.name
    # kombu's folders, the control folder (exchange bindings) included, live under var/, none in the cwd.
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = Path(options[key])
        assert folder.is_relative_to(var), (key, folder)
        assert folder.is_dir() and _mode(folder) == 0o700, key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["var"]


def test_existing_var_and_database_are_made_private(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    (var / "budcluster.sqlite3").touch(mode=0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        BUDCLUSTER_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="budcluster_site.settings", PYTHONPATH=str(ROOT)
    )
    subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=tmp_path,
        env=env,
        timeout=120,
        umask=0o022,
        check=True,
    )
    assert _mode(var) == 0o700
    assert _mode(var / "budcluster.sqlite3") == 0o600


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_broker_health_check_leaves_no_file_behind(client, tmp_path, monkeypatch):
    """Embedded broker: kombu's filesystem transport. Each call used to leave control/<exchange>.exchange."""
    broker = tmp_path / "broker"
    options = {
        "data_folder_in": str(broker / "queue"),
        "data_folder_out": str(broker / "queue"),
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
        "store_processed": False,
    }
    for folder in {options["data_folder_in"], options["processed_folder"], options["control_folder"]}:
        Path(folder).mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(settings, "CELERY_BROKER_URL", "filesystem://")
    monkeypatch.setattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", options)

    for _ in range(3):
        response = client.get("/health/broker")
        assert response.status_code == 200, response.json()
    assert _files(tmp_path) == []


@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis://"), reason="the suite's broker is not Redis"
)
def test_broker_health_check_leaves_no_key_behind_in_redis(client):
    import redis

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for _ in range(3):
        assert client.get("/health/broker").status_code == 200
    assert [key for key in broker.scan_iter("*budcluster.health*")] == []
