"""Provisioning under ``make run`` with the local module: the configuration path scripts/run.sh sets up.

``PROVISIONING_MODULE_OVERRIDE=terraform/testing/local-cluster make run`` starts its devcluster with a spare
virtual cluster (``devcluster serve --names default,provisioned``), has ``attach_devcluster --provisioning-target
provisioned`` write that cluster's API server, CA and token to ``PROVISIONING_MODULE_VARIABLES_FILE`` (0600), and
writes the override, that file's path and the Terraform CLI configuration of the provider mirror to
``var/make-run.env``. A ``manage.py provision`` typed in a second terminal (an environment without any of them)
then provisions, and the cluster registered at the end is that spare virtual cluster. The steps are run here as
run.sh runs them, each in its own process, against the test database and the session's worker; ``make run``
itself is not started (its web server and beat add nothing to this path). The file is only read while the
override is set, so production (no override) never sees it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus
from core.models import Run
from provisioning import services
from provisioning.models import Provisioning
from tests.worker import test_database_url as database_url

from .conftest import drop_schema

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
LOCAL_MODULE = "terraform/testing/local-cluster"
# What scripts/run.sh writes to var/make-run.env besides the loopback setting.
RUN_SETTINGS = (
    "PROVISIONING_MODULE_OVERRIDE",
    "PROVISIONING_MODULE_VARIABLES_FILE",
    "TERRAFORM_CLI_CONFIG_FILE",
)
GUARD = "BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"


def _second_terminal(**extra: str) -> dict[str, str]:
    """A shell without the settings `make run` gives its processes (pytest sets them empty; an empty variable
    would win over the file), pointed at the test database and broker."""
    env = {**os.environ, "DATABASE_URL": database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    for name in (GUARD, *RUN_SETTINGS):
        env.pop(name, None)
    return {**env, **extra}


def _run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def make_run_devcluster(tmp_path):
    """`python -m devcluster serve` as run.sh starts it with the override set; yields the var/ folder."""
    var = tmp_path / "var"
    var.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "devcluster", "serve", "--port", "0", "--nodes", "cpu-small",
            "--kubeconfig", str(var / "devcluster.yaml"), "--names", "default,provisioned",
            "--state-dir", str(var / "devcluster-state"), "--log-level", "WARNING",
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        spare = var / "devcluster.d" / "provisioned.yaml"  # written after devcluster.yaml
        deadline = time.monotonic() + 60
        while not spare.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        assert spare.exists(), "the devcluster wrote no kubeconfig for its spare virtual cluster"
        yield var
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_a_provision_in_a_second_terminal_registers_the_spare_virtual_cluster(
    api, worker, make_run_devcluster
):
    var = make_run_devcluster
    variables_file = var / "provisioning-module-variables.json"
    default = yaml.safe_load((var / "devcluster.yaml").read_text())["clusters"][0]["cluster"]["server"]
    spare = yaml.safe_load((var / "devcluster.d" / "provisioned.yaml").read_text())
    spare_server = spare["clusters"][0]["cluster"]["server"]
    spare_token = spare["users"][0]["user"]["token"]
    assert default.endswith("/clusters/default") and spare_server.endswith("/clusters/provisioned")

    # run.sh: the provider mirror's CLI configuration (Terraform installs hashicorp/null without a registry).
    mirror = _run(
        "-m", "provisioning.toolchain", "mirror", str(ROOT / "var/test-terraform/toolchain"), env=os.environ
    )
    assert mirror.returncode == 0, mirror.stderr
    cli_config = Path(mirror.stdout.strip())
    assert "filesystem_mirror" in cli_config.read_text()

    run_env = _second_terminal(
        **{
            GUARD: "1",
            "PROVISIONING_MODULE_OVERRIDE": LOCAL_MODULE,
            "PROVISIONING_MODULE_VARIABLES_FILE": str(variables_file),
            "TERRAFORM_CLI_CONFIG_FILE": str(cli_config),
        }
    )
    # run.sh: register the devcluster and hand the spare virtual cluster to provisioning.
    attached = _run(
        "manage.py", "attach_devcluster", str(var / "devcluster.yaml"), "--name", "devcluster",
        "--provisioning-target", "provisioned", env=run_env,
    )  # fmt: skip
    assert attached.returncode == 0, attached.stdout + attached.stderr
    assert "virtual cluster provisioned" in attached.stdout
    assert spare_token not in attached.stdout + attached.stderr
    assert variables_file.stat().st_mode & 0o077 == 0
    assert json.loads(variables_file.read_text()) == {
        "api_server": spare_server,
        "ca_data": spare["clusters"][0]["cluster"]["certificate-authority-data"],
        "token": spare_token,
    }
    written = _run(
        "-m", "budcluster_site.env", "write", str(var / "make-run.env"), GUARD, *RUN_SETTINGS, env=run_env
    )
    assert written.returncode == 0, written.stderr

    credential = api.post(
        "/credentials",
        {
            "name": "aws-local",
            "provider": "aws",
            "region": "us-east-1",
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
        },
        format="json",
    )
    assert credential.status_code == 201, credential.json()

    # The second terminal knows nothing but the var/ folder: the settings come from var/make-run.env.
    provisioned = _run(
        "manage.py", "provision", "local-gpu", "--provider", "aws", "--region", "us-east-1",
        "--credential", "aws-local", "--system-pool", "m6i.large:2:1:3", "--auto-approve", "--timeout", "150",
        env=_second_terminal(BUDCLUSTER_VAR_DIR=str(var)),
    )  # fmt: skip
    cluster = Cluster.objects.filter(name="local-gpu").first()
    try:
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        assert "cluster local-gpu provisioned and registered" in provisioned.stdout
        assert spare_token not in provisioned.stdout + provisioned.stderr

        shown = api.get(f"/clusters/{cluster.pk}").json()
        assert (shown["status"], shown["server_url"]) == (ClusterStatus.AVAILABLE, spare_server)
        assert api.get(f"/clusters/{cluster.pk}/nodes").json()["count"] > 0
        provisioning = Provisioning.objects.get(cluster=cluster)
        assert provisioning.module == LOCAL_MODULE
        assert provisioning.variables["api_server"] == spare_server
        assert (
            "token" not in provisioning.variables
        )  # sensitive: stored encrypted, reaches Terraform as TF_VAR_
        assert Run.objects.get(pk=provisioning.run_id).status == RunStatus.SUCCEEDED
    finally:
        if cluster is not None:
            drop_schema(Provisioning.objects.get(cluster=cluster).state_name)


def test_the_variables_file_is_read_with_the_override_only_and_must_be_private(settings, tmp_path):
    token = "a-token-that-must-stay-secret"
    file = tmp_path / "variables.json"
    file.write_text(json.dumps({"api_server": "https://127.0.0.1:1/clusters/x", "token": token}))
    file.chmod(0o600)
    settings.PROVISIONING_MODULE_VARIABLES_FILE = str(file)

    # Production: no override, so a leftover setting never feeds variables to a cloud module.
    settings.PROVISIONING_MODULE_OVERRIDE = ""
    assert services.override_variables_file() == {}

    settings.PROVISIONING_MODULE_OVERRIDE = LOCAL_MODULE
    assert services.override_variables_file()["token"] == token

    file.chmod(0o644)
    with pytest.raises(services.ProvisioningRefused) as readable:
        services.override_variables_file()
    assert "chmod 600" in str(readable.value) and token not in str(readable.value)

    file.chmod(0o600)
    file.write_text(f'["{token}"]')
    with pytest.raises(services.ProvisioningRefused) as not_object:
        services.override_variables_file()
    assert "not a readable JSON object" in str(not_object.value) and token not in str(not_object.value)

    file.unlink()
    with pytest.raises(services.ProvisioningRefused) as missing:
        services.override_variables_file()
    assert "does not exist" in str(missing.value) and missing.value.code == "missing_variables"
