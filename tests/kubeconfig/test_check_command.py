"""``manage.py check_kubeconfig`` prints OK / the reason and exits 0 / 1, with the registration rules."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.kubeconfig.test_validate import base_config, dump, with_server, with_user

REPO = Path(__file__).resolve().parents[2]


def run(path: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("check_kubeconfig", str(path), *args, stdout=out)
    return out.getvalue()


def test_valid_file_prints_ok(tmp_path):
    path = tmp_path / "config"
    path.write_text(dump(base_config()))
    assert run(path).strip() == "OK"


def test_hostile_file_fails_with_reason_and_code_1(tmp_path):
    path = tmp_path / "config"
    path.write_text(with_user({"exec": {"command": "aws"}}, extra_user=True))
    with pytest.raises(CommandError) as info:
        run(path)
    assert info.value.returncode == 1
    assert "user 'other' uses exec" in str(info.value)


def test_context_option_selects_the_context(tmp_path):
    config = base_config()
    config.pop("current-context")
    config["contexts"].append({"name": "second", "context": {"cluster": "prod-cluster", "user": "admin"}})
    path = tmp_path / "config"
    path.write_text(dump(config))
    with pytest.raises(CommandError, match="no current-context"):
        run(path)
    assert run(path, "--context", "second").strip() == "OK"
    with pytest.raises(CommandError, match="context 'third' not found"):
        run(path, "--context", "third")


def test_loopback_follows_the_same_setting_as_the_api(tmp_path, settings):
    path = tmp_path / "config"
    path.write_text(with_server("https://127.0.0.1:6443"))
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = False
    with pytest.raises(CommandError, match="loopback"):
        run(path)
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    assert run(path).strip() == "OK"


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        run(tmp_path / "nope")


def test_exit_codes_of_the_real_command(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(dump(base_config()))
    bad.write_text(with_server("https://169.254.169.254"))
    env = {**os.environ, "BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS": "0"}
    ok = subprocess.run(
        [sys.executable, "manage.py", "check_kubeconfig", str(good)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "OK"), ok.stderr
    refused = subprocess.run(
        [sys.executable, "manage.py", "check_kubeconfig", str(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "169.254.169.254 is a cloud metadata endpoint" in refused.stderr
    assert "OK" not in refused.stdout
