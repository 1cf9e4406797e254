"""The real control plane harness itself: what a test on it may rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from kubernetes import client

from tests.tools import kubectl_binary
from tests.worker import wait_for


def test_preset_nodes_are_ready_with_their_accelerators(real_cluster):
    core = client.CoreV1Api(real_cluster.client())
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(nodes) == set(real_cluster.hardware)
    assert nodes["gpu-h100-0"].status.allocatable["nvidia.com/gpu"] == "8"
    assert nodes["gpu-mi300x-0"].status.allocatable["amd.com/gpu"] == "8"
    assert nodes["hpu-gaudi2-0"].status.allocatable["habana.ai/gaudi"] == "8"
    for node in nodes.values():
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", node.metadata.name
        # Nothing in the test bed may point at a private range.
        assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == ["127.0.0.1"]


def test_rbac_is_enforced(real_cluster):
    core = client.CoreV1Api(real_cluster.client("nobody"))
    with pytest.raises(client.ApiException) as err:
        core.list_namespaced_secret("kube-system")
    assert err.value.status == 403
    assert 'User "budcluster-nobody" cannot list resource "secrets"' in json.loads(err.value.body)["message"]


def test_pod_security_admission_refuses_privileged_pods_in_restricted_namespaces(real_cluster):
    core = client.CoreV1Api(real_cluster.client())
    core.create_namespace(
        {
            "metadata": {
                "name": "psa-restricted",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            }
        }
    )
    pod = {
        "metadata": {"name": "priv"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod("psa-restricted", pod)
    assert err.value.status == 403
    assert 'violates PodSecurity "restricted:latest": privileged' in json.loads(err.value.body)["message"]
    core.delete_namespace("psa-restricted")


def test_scheduled_pods_run_and_a_load_balancer_serves_the_inference_simulator(real_cluster):
    api = real_cluster.client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = "harness-lb"
    core.create_namespace({"metadata": {"name": ns}})
    labels = {"app": "vllm"}
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.6.0",
        "args": ["--model", "facebook/opt-125m", "--port", "8000"],
        "resources": {"limits": {"nvidia.com/gpu": "8"}},
    }
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "vllm"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
    )
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "vllm"},
            "spec": {"type": "LoadBalancer", "selector": labels, "ports": [{"port": 8000}]},
        },
    )

    def running():
        pods = [p for p in core.list_namespaced_pod(ns).items if p.status.phase == "Running"]
        return pods[0] if pods else None

    pod = wait_for(running, timeout=30, what="the pod to run")
    # The real scheduler placed it: only the H100 node has 8 free NVIDIA GPUs.
    assert pod.spec.node_name == "gpu-h100-0"
    svc = wait_for(
        lambda: (s := core.read_namespaced_service("vllm", ns)).status.load_balancer.ingress and s,
        timeout=30,
        what="a load balancer address",
    )
    ip = svc.status.load_balancer.ingress[0].ip
    assert ip.startswith("127.")
    models = httpx.get(f"http://{ip}:8000/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["facebook/opt-125m"]
    core.delete_namespace(ns)


def test_cli_prints_start_up_time_and_stops_on_ctrl_c(tmp_path):
    out = tmp_path / "admin.yaml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devcluster",
            "real",
            "serve",
            "--nodes",
            "cpu-small",
            "--kubeconfig",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()  # blocks until the control plane is up (or the process dies)
        assert "ready in" in line, line + proc.stderr.read()
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        kubectl = subprocess.run(
            [kubectl_binary(), "--kubeconfig", str(out), "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert kubectl.returncode == 0, kubectl.stderr
        assert "node/" in kubectl.stdout
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 30
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
