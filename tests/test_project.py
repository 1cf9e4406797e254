"""Project-level checks: deploy checks, migrations, OpenAPI schema, docs pages, compose file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_has_no_issues_with_production_env():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DJANGO_SECURE": "1",
            "DJANGO_SECRET_KEY": "x" * 20 + "-production-like-secret-key-with-enough-entropy-0123456789",
            "DJANGO_ALLOWED_HOSTS": "budcluster.example.com",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_missing_migrations():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_openapi_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    result = _manage("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    schema = yaml.safe_load(out.read_text())
    assert "/runs/{id}/cancel" in schema["paths"]
    assert "tokenAuth" in schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_docs_pages_render(client):
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"<html" in response.content.lower()
    schema = client.get("/schema")
    assert schema.status_code == 200


def test_compose_file_matches_settings():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    for name in ("postgres", "redis", "web"):
        assert "healthcheck" in services[name], name
    from budcluster_site import settings as project_settings

    documented = set((ROOT / ".env.sample").read_text().split())
    for name in ("web", "worker", "beat"):
        service = services[name]
        env = service.get("environment", {})
        for var in (
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "CRYPTO_PRIVATE_KEY_PATH",
            "CRYPTO_SYMMETRIC_KEY_PATH",
        ):
            assert var in env, (name, var)
            assert any(line.startswith(var + "=") for line in documented), var
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        mounts = " ".join(service.get("volumes", []))
        assert "crypto-keys" in mounts, name
        assert service.get("depends_on"), name
    assert "9082" in " ".join(services["web"]["ports"])
    # The image's entrypoint subcommands (scripts/entrypoint.sh; tests/production/test_image.py checks them).
    assert services["worker"]["command"][0] == "worker"
    assert "beat" in services["beat"]["command"]
    assert str(project_settings.PORT) == "9082"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "python:3.11" in dockerfile and "requirements.txt" in dockerfile


def test_env_sample_documents_every_setting_read_from_environment():
    import re

    names = set()
    for path in [ROOT / "budcluster_site" / "settings.py"]:
        names |= set(re.findall(r'env_\w+\("([A-Z0-9_]+)"', path.read_text()))
    sample = (ROOT / ".env.sample").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in names if n not in sample or n not in readme)
    assert not missing, f"undocumented settings: {missing}"


APPS = ("clusters", "hardware", "deployments", "provisioning")


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at module level or inside functions."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # The shared machinery (workflow engine, gateway, address guard, crypto) knows no app built on it.
        ("core", APPS),
        # Clusters are the base every other app builds on; apps above extend it (clusters.extensions, admin
        # subclasses) and the lifecycle workflows are composed in budcluster_site.workflows.
        ("clusters", ("hardware", "deployments", "provisioning")),
        # Provisioning makes clusters; it knows nothing of what runs on them.
        ("provisioning", ("hardware", "deployments")),
        # The inventory serves placement; placement reads the inventory, never the other way round.
        ("hardware", ("deployments", "provisioning")),
    ],
)
def test_layers_point_down(package, forbidden):
    """No module of `package` imports `forbidden`, not even lazily inside a function."""
    root = Path(__file__).resolve().parent.parent / package
    offenders = {
        str(path.relative_to(root.parent)): sorted(_imported_modules(path) & set(forbidden))
        for path in root.rglob("*.py")
        if "migrations" not in path.parts and "tests" not in path.parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_apps_import_each_other_without_cycles():
    """The apps' import graph (lazy imports included) has no cycle: each app can be read knowing only those
    below it."""
    import graphlib

    root = Path(__file__).resolve().parent.parent
    packages = ("core", *APPS)
    graph = {
        package: {
            imported
            for path in (root / package).rglob("*.py")
            if "migrations" not in path.parts
            for imported in _imported_modules(path) & set(packages)
            if imported != package
        }
        for package in packages
    }
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError naming the cycle
    assert order[0] == "core"
