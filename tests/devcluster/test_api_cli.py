"""`python -m devcluster serve`: kubeconfig files, their permissions, and a client using them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]


def test_serve_writes_kubeconfigs_per_cluster(tmp_path: Path) -> None:
    out = tmp_path / "kube" / "dev.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "devcluster",
        "serve",
        "--port",
        "0",
        "--clusters",
        "2",
        "--kubeconfig",
        str(out),
    ]
    cmd += ["--job-duration", "1", "--sim-set", "lb_listen=false"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        per_cluster = out.with_name("dev.d")
        admin = out.with_name("dev.admin-token")
        deadline = time.monotonic() + 60
        while not (admin.exists() and (per_cluster / "c0002.yaml").exists()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
        assert admin.exists()
        assert (out.stat().st_mode & 0o777) == 0o600
        # The README names the files as they are written: beside the kubeconfig, after its stem.
        readme = (ROOT / "README.md").read_text()
        assert "`<stem>.d/<name>.yaml`" in readme and "`<stem>.admin-token`" in readme
        assert "OUT.d/" not in readme and "OUT.admin-token" not in readme
        first = yaml.safe_load(out.read_text())
        assert first["clusters"][0]["cluster"]["server"].endswith("/clusters/c0001")
        assert first["clusters"][0]["cluster"]["certificate-authority-data"]
        second = yaml.safe_load((per_cluster / "c0002.yaml").read_text())
        assert second["users"][0]["user"]["token"] != first["users"][0]["user"]["token"]

        api = config.new_client_from_config(str(per_cluster / "c0002.yaml"))
        assert client.CoreV1Api(api).list_node().items
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
