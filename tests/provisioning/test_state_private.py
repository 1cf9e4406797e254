"""Terraform state on the local backend is private, and the cluster's token never enters it.

State is plain text whatever the backend; the local module (as every module given the cluster's token) returns
a kubeconfig without it, and Terraform never writes variables into the state.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from provisioning.terraform import TerraformRunner
from tests.provisioning.conftest import LOCAL_MODULE

TOKEN = "canary-kube-token-7f3a9c1e5b"
SECRET_KEY = "canary-aws-secret-0d9e8f7a6b"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _apply(tf_cli_config: Path, state: Path, node_count: int) -> None:
    with TerraformRunner(
        LOCAL_MODULE,
        backend="local",
        state_path=state,
        variables={"cluster_name": "demo", "node_count": node_count, "echo_env_var": "AWS_SECRET_ACCESS_KEY"},
        secret_variables={"token": TOKEN},
        env={"AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        cli_config_file=tf_cli_config,
    ) as tf:
        tf.init()
        tf.apply(tf.plan())
        assert tf.output()["kubeconfig"].sensitive


def test_local_state_is_0600_in_a_0700_folder_and_holds_no_token(tf_cli_config, tmp_path):
    state = tmp_path / "terraform" / "cluster-7" / "terraform.tfstate"
    previous = os.umask(0o022)  # the usual umask: without care Terraform writes 0644 files
    try:
        _apply(tf_cli_config, state, node_count=1)
        _apply(tf_cli_config, state, node_count=2)  # a second apply leaves a .backup next to the state
    finally:
        os.umask(previous)

    backup = state.with_name("terraform.tfstate.backup")
    assert backup.exists()
    assert _mode(state.parent) == 0o700
    assert _mode(state) == 0o600 and _mode(backup) == 0o600
    for path in (state, backup):
        text = path.read_text()
        assert '"null_resource"' in text  # it is the real state
        for secret in (TOKEN, SECRET_KEY):
            assert secret not in text
            assert base64.b64encode(secret.encode()).decode()[:16] not in text


def test_state_left_readable_by_an_older_version_is_tightened(tf_cli_config, tmp_path):
    folder = tmp_path / "cluster-8"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    state = folder / "terraform.tfstate"
    state.write_text("")
    state.chmod(0o644)
    with TerraformRunner(LOCAL_MODULE, backend="local", state_path=state, cli_config_file=tf_cli_config):
        pass
    assert _mode(folder) == 0o700
    assert _mode(state) == 0o600
