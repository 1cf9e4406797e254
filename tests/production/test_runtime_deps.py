"""Everything the service imports at run time comes from ``requirements.txt``.

The service (web, worker, beat, management commands, the devcluster ``make run`` starts) is imported module by
module and ``manage.py check`` run inside a venv that holds exactly the distributions ``requirements.txt`` installs
(tests/production/runtime_env.py says how it is built, and why not by pip: a cold install measured about 4 minutes
here). Importing a module runs only its top-level imports, and the service defers heavy ones into functions
(``provisioning/hcl.py`` imports ``hcl2`` when it first parses): so every ``import`` statement of the service,
wherever it stands, is also read from the source (AST) and its top-level module looked up in that venv. A dev-only
import fails this test, naming the module and the file and line that import it. The same environment also shows
what provisioning and cluster setup need at run time: the Terraform of the pinned wheel runs and finds its null
provider (so ``make run`` provisions with ``PROVISIONING_MODULE_OVERRIDE=terraform/testing/local-cluster``), and
the playbooks resolve the kubernetes.core modules they use (``ansible-playbook --syntax-check`` refuses an action
it cannot resolve).
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from .runtime_env import ROOT, build, clean_env, closure, requirement_lines

# What the service is: its Django project and apps, and the devcluster `make run` starts beside them.
SERVICE_PACKAGES = (
    "budcluster_site",
    "core",
    "clusters",
    "hardware",
    "deployments",
    "provisioning",
    "devcluster",
)
# pytest fixtures shipped for the test suite (they import pytest): test tooling, never imported by the service.
TEST_TOOLING = {"devcluster.testing", "devcluster.real.testing"}

PROBE = r"""
import importlib, importlib.util, json, sys
import django
django.setup()
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
for name, where in json.loads(sys.argv[3]).items():
    try:
        missing = name not in sys.modules and importlib.util.find_spec(name) is None
    except ValueError:  # in sys.modules without a spec (kombu's lazy modules): importable
        missing = False
    if missing:
        failed[name] = "not installed; imported at " + ", ".join(where[:5])
from provisioning.toolchain import find_terraform_binary, provider_mirror_config
from pathlib import Path
print(json.dumps({
    "failed": failed,
    "prefix": sys.prefix,
    "terraform": find_terraform_binary(),
    "mirror": str(provider_mirror_config(Path(sys.argv[2]))),
    "dev_only_visible": [m for m in ("pytest", "kubernetes_validate", "schemathesis", "selenium")
                          if importlib.util.find_spec(m) is not None],
}))
"""


def service_files() -> dict[str, Path]:
    """Module name -> source file of every module of the service."""
    found = {}
    for package in SERVICE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            if "tests" in rel.parts or "build" in rel.parts:
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            name = ".".join(parts)
            if name not in TEST_TOOLING:
                found[name] = path
    return found


def service_modules() -> list[str]:
    return list(service_files())


def imported_top_levels() -> dict[str, list[str]]:
    """Top-level module of every absolute import statement in the service (functions' bodies included) ->
    where it is imported (file:line)."""
    where: dict[str, list[str]] = {}
    for path in service_files().values():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                where.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return where


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("runtime") / "venv")


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory) -> dict[str, str]:
    var = tmp_path_factory.mktemp("var")
    # The embedded profile (SQLite, filesystem broker) under a private var/: nothing of the test session leaks in.
    return clean_env(DJANGO_SETTINGS_MODULE="budcluster_site.settings", BUDCLUSTER_VAR_DIR=str(var))


def test_the_runtime_venv_holds_requirements_txt_and_nothing_else(runtime_python, runtime_env):
    wanted = closure(requirement_lines())
    assert {"django", "celery", "python-hcl2", "ansible", "kubernetes"} <= set(wanted)
    out = subprocess.run(
        [str(runtime_python), "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] "
         "for d in m.distributions()))"],
        cwd=ROOT, env=runtime_env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    from packaging.utils import canonicalize_name

    assert {canonicalize_name(n) for n in out.split()} == set(wanted)


def test_every_service_module_imports_and_check_passes_with_runtime_requirements_only(
    runtime_python, runtime_env, tmp_path
):
    modules = service_modules()
    assert len(modules) > 100, modules  # the walk found the service, not an empty tree
    imports = imported_top_levels()
    assert "hcl2" in imports  # imported inside a function only: the source scan sees it
    probe = subprocess.run(
        [str(runtime_python), "-c", PROBE, json.dumps(modules), str(tmp_path / "tf"), json.dumps(imports)],
        cwd=ROOT, env=runtime_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-4000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, "imports of packages requirements.txt does not install"
    assert report["dev_only_visible"] == [], "the runtime venv must not see test tooling"
    assert report["prefix"] == str(runtime_python.parent.parent)

    # Terraform from the pinned wheel, inside this venv, runs; the local module's provider is found offline.
    assert report["terraform"].startswith(report["prefix"])
    version = subprocess.run(
        [report["terraform"], "version"],
        env=runtime_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout.startswith("Terraform v1.0.3")
    assert "filesystem_mirror" in Path(report["mirror"]).read_text()

    check = subprocess.run(
        [str(runtime_python), "manage.py", "check", "--fail-level", "ERROR"],
        cwd=ROOT, env=runtime_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-4000:]
    assert "System check identified no issues" in check.stdout or "0 silenced" in check.stdout


@pytest.mark.parametrize("playbook", ["setup_cluster.yml", "teardown_cluster.yml", "identify_platform.yml"])
def test_playbooks_resolve_their_collections_with_runtime_requirements_only(
    runtime_python, runtime_env, playbook
):
    run = subprocess.run(
        [str(runtime_python), "-c", "import sys; from ansible.cli.playbook import main; sys.exit(main())",
         "--syntax-check", "-i", "localhost,", "-c", "local", f"playbooks/{playbook}"],
        cwd=ROOT, env={**runtime_env, "ANSIBLE_LOCAL_TEMP": str(Path(runtime_env["BUDCLUSTER_VAR_DIR"]) / "ansible")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"playbook: playbooks/{playbook}" in run.stdout


def test_syntax_check_refuses_a_module_no_runtime_requirement_provides(runtime_python, runtime_env, tmp_path):
    """The playbook check above can fail: an action from a collection that is not installed is refused."""
    book = tmp_path / "unknown.yml"
    book.write_text("- hosts: localhost\n  tasks:\n    - budcluster.missing.thing: {}\n")
    run = subprocess.run(
        [str(runtime_python), "-c", "import sys; from ansible.cli.playbook import main; sys.exit(main())",
         "--syntax-check", "-i", "localhost,", "-c", "local", str(book)],
        cwd=ROOT, env={**runtime_env, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "budcluster.missing.thing" in run.stdout + run.stderr
