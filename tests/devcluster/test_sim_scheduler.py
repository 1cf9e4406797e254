"""Scheduler behaviour: resource fit, FailedScheduling messages, taints, affinity, retries, node faults."""

from __future__ import annotations

from decimal import Decimal

import pytest
from kubernetes import client

from devcluster.sim import scheduler
from devcluster.sim.objects import quantity
from devcluster.sim.testing import gpu_pod, pod_condition, wait_for

pytest_plugins = ["tests.devcluster.sim_fixtures"]


def free_gpus(core: client.CoreV1Api) -> dict[str, Decimal]:
    used: dict[str, Decimal] = {}
    for p in core.list_pod_for_all_namespaces().items:
        if p.spec.node_name and p.status.phase not in ("Succeeded", "Failed"):
            for c in p.spec.containers:
                limits = (c.resources.limits or {}) if c.resources else {}
                used[p.spec.node_name] = used.get(p.spec.node_name, Decimal(0)) + quantity(
                    limits.get("nvidia.com/gpu", 0)
                )
    return {
        n.metadata.name: quantity(n.status.allocatable.get("nvidia.com/gpu", 0))
        - used.get(n.metadata.name, 0)
        for n in core.list_node().items
    }


def is_ready(core: client.CoreV1Api, ns: str, name: str) -> bool:
    cond = pod_condition(core.read_namespaced_pod(name, ns), "Ready")
    return cond is not None and cond.status == "True"


def scheduled_node(core: client.CoreV1Api, ns: str, name: str) -> str:
    return wait_for(lambda: core.read_namespaced_pod(name, ns).spec.node_name)


def failed_scheduling(core: client.CoreV1Api, ns: str, name: str) -> str:
    def message() -> str | None:
        for e in core.list_namespaced_event(ns).items:
            if e.involved_object.name == name and e.reason == "FailedScheduling":
                return e.message
        return None

    return wait_for(message)


def test_four_gpu_pod_lands_only_on_a_node_with_four_free(core, ns):
    # Leave 2 GPUs free on the A100 node; only the H100 node then has 4 free.
    core.create_namespaced_pod(
        ns, gpu_pod("filler", 4, nodeSelector={"kubernetes.io/hostname": "gpu-a100-mig-0"})
    )
    assert scheduled_node(core, ns, "filler") == "gpu-a100-mig-0"
    for name in ("four-a", "four-b"):
        before = free_gpus(core)
        core.create_namespaced_pod(ns, gpu_pod(name, 4))
        node = scheduled_node(core, ns, name)
        assert before[node] >= 4
        assert node == "gpu-h100-0"
    core.create_namespaced_pod(ns, gpu_pod("four-c", 4))
    msg = failed_scheduling(core, ns, "four-c")
    assert "Insufficient nvidia.com/gpu" in msg
    pod = core.read_namespaced_pod("four-c", ns)
    assert pod.spec.node_name is None and pod.status.phase == "Pending"
    cond = pod_condition(pod, "PodScheduled")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")


def test_nine_gpu_request_stays_pending_with_failed_scheduling_event(core, ns):
    core.create_namespaced_pod(ns, gpu_pod("nine", 9))
    msg = failed_scheduling(core, ns, "nine")
    total = len(core.list_node().items)
    assert msg.startswith(f"0/{total} nodes are available: ")
    assert "1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }" in msg
    assert f"{total - 1} Insufficient nvidia.com/gpu" in msg
    assert core.read_namespaced_pod("nine", ns).spec.node_name is None


def test_other_accelerators_are_counted_by_their_own_resource(core, ns):
    core.create_namespaced_pod(ns, gpu_pod("mi300", 8, resource="amd.com/gpu"))
    core.create_namespaced_pod(ns, gpu_pod("gaudi", 2, resource="habana.ai/gaudi"))
    assert scheduled_node(core, ns, "mi300") == "gpu-mi300x-0"
    assert scheduled_node(core, ns, "gaudi") == "hpu-gaudi2-0"
    core.create_namespaced_pod(ns, gpu_pod("mi300-more", 1, resource="amd.com/gpu"))
    assert "Insufficient amd.com/gpu" in failed_scheduling(core, ns, "mi300-more")


def test_tainted_node_avoided_without_toleration_and_used_with_one(core, ns):
    pin = {"nodeSelector": {"kubernetes.io/hostname": "control-plane-0"}}
    plain = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}], **pin},
    }
    core.create_namespaced_pod(ns, plain)
    msg = failed_scheduling(core, ns, "plain")
    assert "1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }" in msg
    assert "node(s) didn't match Pod's node affinity/selector" in msg
    tolerant = {**plain, "metadata": {"name": "tolerant"}}
    tolerant["spec"] = {
        **plain["spec"],
        "tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
        ],
    }
    core.create_namespaced_pod(ns, tolerant)
    assert scheduled_node(core, ns, "tolerant") == "control-plane-0"
    wait_for(lambda: core.read_namespaced_pod("tolerant", ns).status.phase == "Running")


def test_pending_pod_is_scheduled_when_capacity_frees(core, ns):
    pin = {"nodeSelector": {"kubernetes.io/hostname": "gpu-h100-0"}}
    core.create_namespaced_pod(ns, gpu_pod("first", 8, **pin))
    assert scheduled_node(core, ns, "first") == "gpu-h100-0"
    core.create_namespaced_pod(ns, gpu_pod("second", 8, **pin))
    failed_scheduling(core, ns, "second")
    core.delete_namespaced_pod("first", ns)
    assert scheduled_node(core, ns, "second") == "gpu-h100-0"


def test_not_ready_node_gets_no_new_pods_and_its_pods_turn_unready(gpu_cluster, core, ns):
    pin = {"nodeSelector": {"kubernetes.io/hostname": "cpu-xeon-spr-0"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}], **pin},
    }
    core.create_namespaced_pod(ns, pod)
    wait_for(lambda: is_ready(core, ns, "web"))
    gpu_cluster.set_fault(gpu_cluster.names[0], "node-not-ready", "cpu-xeon-spr-0")
    try:
        node = core.read_node("cpu-xeon-spr-0")
        assert next(c for c in node.status.conditions if c.type == "Ready").status == "False"
        wait_for(lambda: pod_condition(core.read_namespaced_pod("web", ns), "Ready").status == "False")
        core.create_namespaced_pod(ns, {**pod, "metadata": {"name": "late"}})
        assert "untolerated taint {node.kubernetes.io/not-ready: }" in failed_scheduling(core, ns, "late")
    finally:
        gpu_cluster.set_fault(gpu_cluster.names[0], "clear", "cpu-xeon-spr-0")
    assert scheduled_node(core, ns, "late") == "cpu-xeon-spr-0"
    wait_for(lambda: is_ready(core, ns, "web"))


# ------------------------------------------------------------------------------------ pure functions


def _node(name: str, labels: dict | None = None, taints: list | None = None, **alloc: str) -> dict:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or []},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", **alloc},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(requests: dict | None = None, **spec: object) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "d"},
        "spec": {"containers": [{"name": "c", "resources": {"requests": requests or {}}}], **spec},
    }


@pytest.mark.parametrize(
    ("op", "values", "label", "fits"),
    [
        ("In", ["a", "b"], "a", True),
        ("In", ["b"], "a", False),
        ("NotIn", ["a"], "a", False),
        ("NotIn", ["b"], None, True),
        ("Exists", [], "x", True),
        ("DoesNotExist", [], "x", False),
        ("Gt", ["79"], "80", True),
        ("Gt", ["80"], "80", False),
        ("Lt", ["81"], "80", True),
        ("Lt", ["80"], "not-a-number", False),
    ],
)
def test_required_node_affinity_operators(op, values, label, fits):
    labels = {"k": label} if label is not None else {}
    expr = {"key": "k", "operator": op, "values": values}
    pod = _pod(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [expr]}]
                }
            }
        }
    )
    assert (scheduler.filter_node(pod, _node("n", labels)) == []) is fits


def test_prefer_no_schedule_is_ignored_and_cordoned_node_refused():
    soft = _node("soft", taints=[{"key": "gpu", "effect": "PreferNoSchedule"}])
    assert scheduler.filter_node(_pod(), soft) == []
    cordoned = _node("cordoned")
    cordoned["spec"]["unschedulable"] = True
    assert scheduler.filter_node(_pod(), cordoned) == ["node(s) were unschedulable"]


def test_requests_sum_with_running_pods_and_report_every_shortage():
    node = _node("n", **{"nvidia.com/gpu": "2"})
    used = {"cpu": Decimal(3), "nvidia.com/gpu": Decimal(1)}
    reasons = scheduler.filter_node(_pod({"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "2"}), node, used)
    assert reasons == ["Insufficient cpu", "Insufficient nvidia.com/gpu"]
    assert scheduler.filter_node(_pod({"cpu": "500m"}), node, used) == []


def test_failure_message_counts_and_sorts_like_kube_scheduler():
    nodes = [
        _node("cp", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        _node("a"),
        _node("b"),
    ]
    name, msg = scheduler.schedule(_pod({"nvidia.com/gpu": "1"}), nodes, {})
    assert name is None
    assert msg == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "2 Insufficient nvidia.com/gpu."
    )
