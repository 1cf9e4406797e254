"""Storing parsed nodes and the views built on the rows: device info and the cluster summary, for the MIG
strategies and for a GPU node whose device count nobody knows."""

from __future__ import annotations

import pytest

from clusters import extensions
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from hardware import services
from hardware.models import Node

pytestmark = pytest.mark.django_db


def _node(name: str, labels: dict[str, str], capacity: dict[str, str]) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", **capacity},
            "allocatable": {"cpu": "16", "memory": "63Gi", **capacity},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(node: str, limits: dict[str, str]) -> dict:
    return {
        "metadata": {"name": f"on-{node}", "namespace": "ml"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": limits}}]},
        "status": {"phase": "Running"},
    }


@pytest.fixture
def cluster() -> Cluster:
    return Cluster.objects.create(name="inventory", status=ClusterStatus.AVAILABLE)


def test_device_info_for_both_mig_strategies_and_an_unknown_count(cluster):
    single = _node(
        "single",
        {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "nvidia.com/mig.strategy": "single"},
        {"nvidia.com/gpu": "14"},
    )
    mixed = _node(
        "mixed",
        {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"},
        {"nvidia.com/gpu": "2", "nvidia.com/mig-3g.40gb": "4"},
    )
    uncounted = _node("uncounted", {"nvidia.com/gpu.product": "NVIDIA-L4"}, {})
    pods = [_pod("single", {"nvidia.com/gpu": "3"}), _pod("mixed", {"nvidia.com/mig-3g.40gb": "1"})]
    totals = services.store_inventory(cluster, [single, mixed, uncounted], pods)
    assert totals["accelerators"] == 16  # 14 slices + 2 whole GPUs; the uncounted node adds nothing

    rows = {n.name: n for n in Node.objects.filter(cluster=cluster)}
    assert rows["uncounted"].accelerator_count is None
    assert any("device count unknown" in note for note in rows["uncounted"].notes)
    assert rows["single"].mig == {"1g.5gb": 14}

    info = {n["node"]: n["devices"] for n in services.device_info(cluster)}
    # Single strategy: the slices are the node's nvidia.com/gpu devices, listed once.
    assert [(d["type"], d["model"], d["total"], d["free"]) for d in info["single"]] == [
        ("cuda", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", 14, 11)
    ]
    assert [(d["type"], d["model"], d["total"], d["free"]) for d in info["mixed"]] == [
        ("cuda", "NVIDIA-A100-SXM4-80GB", 2, 2),
        ("cuda-mig", "3g.40gb", 4, 3),
    ]
    assert info["uncounted"] == []

    # The cluster API reaches the summary through clusters' extension point.
    summary = extensions.summaries([cluster.pk])[cluster.pk]
    assert (summary["nodes"], summary["total_gpus"], summary["free_gpus"]) == (3, 16, 13)
    assert "NVIDIA-L4" not in summary["gpus"]
