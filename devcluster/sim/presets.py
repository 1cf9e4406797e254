"""Hardware presets: Node objects sized like real servers, each with a hidden hardware description.

A preset (`devcluster/presets/<name>.yaml`) lists nodes by machine profile (`machines.yaml`); `load_nodes()`
expands them into complete Node objects (labels, taints, capacity/allocatable, conditions, addresses,
nodeInfo).  The profile's `hardware` block rides along under `HARDWARE_KEY`; `attach()` pops it before the
Node reaches the store, so clients only ever see what a real node shows before feature discovery runs.

Custom node files are accepted too: a YAML list of Node objects, a `kind: List`, or several YAML documents.
Missing status parts are filled with sane defaults; a Node may carry its own hardware block under
`HARDWARE_KEY`, otherwise the PCI vendors are inferred from its device resources.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from devcluster.sim.objects import format_quantity, now_iso, quantity

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
HARDWARE_KEY = "x-devcluster-hardware"

_DEVICE_VENDORS = {"nvidia.com/gpu": "10de", "amd.com/gpu": "1002", "habana.ai/gaudi": "1da3"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "machines")


def _profiles() -> dict[str, dict]:
    with open(PRESET_DIR / "machines.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["profiles"]


def load_nodes(spec: str) -> list[dict]:
    """Nodes for a preset name ("gpu-mixed", "cpu-small", "small-gpu") or a YAML file path.

    A file may be a preset (a mapping with `nodes:` entries naming profiles) or Node objects.
    """
    path = Path(spec)
    if not path.is_file():
        candidate = PRESET_DIR / f"{spec}.yaml"
        if spec == "machines" or not candidate.is_file():
            raise ValueError(
                f"unknown node preset {spec!r}: use one of {', '.join(preset_names())} or a file"
            )
        path = candidate
    with open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    if len(docs) == 1 and isinstance(docs[0], dict) and isinstance(docs[0].get("nodes"), list):
        return expand_preset(docs[0])
    nodes: list[dict] = []
    for doc in docs:
        if isinstance(doc, list):
            nodes.extend(doc)
        elif isinstance(doc, dict) and doc.get("kind") in ("List", "NodeList"):
            nodes.extend(doc.get("items") or [])
        elif isinstance(doc, dict):
            nodes.append(doc)
    out = []
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or (n.get("kind") not in (None, "Node")):
            raise ValueError(f"{path}: item {i} is not a Node object")
        out.append(complete_node(n, i))
    return out


def expand_preset(preset: dict) -> list[dict]:
    profiles = _profiles()
    nodes: list[dict] = []
    for entry in preset["nodes"]:
        prof_name = entry["profile"]
        if prof_name not in profiles:
            raise ValueError(f"unknown machine profile {prof_name!r}")
        count = int(entry.get("count", 1))
        for i in range(count):
            name = entry["name"] if count == 1 else f"{entry['name']}-{i}"
            nodes.append(node_from_profile(name, profiles[prof_name], len(nodes)))
    return nodes


def _allocatable(capacity: dict, reserved: dict) -> dict:
    out = {}
    for res, val in capacity.items():
        left = quantity(val) - quantity(reserved.get(res, 0))
        out[res] = format_quantity(res, max(left, Decimal(0)))
    return out


def _node_info(name: str, info: dict) -> dict:
    # IDs are derived from the name so a restarted devcluster shows the same machines.
    seed = hashlib.sha256(name.encode()).hexdigest()
    return {
        "machineID": seed[:32],
        "systemUUID": str(uuid.UUID(seed[32:64])).upper(),
        "bootID": str(uuid.UUID(seed[:32])),
        "kernelVersion": "5.15.0-126-generic",
        "osImage": "Ubuntu 22.04.5 LTS",
        "containerRuntimeVersion": "containerd://1.7.24",
        "kubeletVersion": "v1.31.4",
        "kubeProxyVersion": "v1.31.4",
        "operatingSystem": "linux",
        "architecture": "amd64",
        **info,
    }


def _conditions() -> list[dict]:
    ts = now_iso()
    base = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    return [
        {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": ts, "lastTransitionTime": ts}
        for t, s, r, m in base
    ]


def node_from_profile(name: str, profile: dict, index: int) -> dict:
    arch = (profile.get("nodeInfo") or {}).get("architecture", "amd64")
    labels = {
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        **(profile.get("labels") or {}),
    }
    capacity = {k: str(v) for k, v in profile["capacity"].items()}
    spec: dict[str, Any] = {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]}
    if profile.get("taints"):
        spec["taints"] = copy.deepcopy(profile["taints"])
    if "ec2.internal" in name:
        zone = labels.get("topology.kubernetes.io/zone", "us-east-1a")
        spec["providerID"] = f"aws:///{zone}/i-0{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": _allocatable(capacity, profile.get("reserved") or {}),
            "conditions": _conditions(),
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.{index // 250}.{10 + index % 250}"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": _node_info(name, profile.get("nodeInfo") or {}),
        },
        HARDWARE_KEY: copy.deepcopy(profile.get("hardware") or {}),
    }
    return node


def complete_node(node: dict, index: int) -> dict:
    """Fill what a custom Node file leaves out so the scheduler and clients see a usable node."""
    node = copy.deepcopy(node)
    node["apiVersion"] = "v1"
    node["kind"] = "Node"
    meta = node.setdefault("metadata", {})
    name = meta.get("name")
    if not name:
        raise ValueError(f"node {index} has no metadata.name")
    labels = meta.setdefault("labels", {})
    for k, v in (
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
    ):
        labels.setdefault(k, v)
    node.setdefault("spec", {})
    status = node.setdefault("status", {})
    capacity = status.setdefault("capacity", {"cpu": "4", "memory": "16384Mi", "pods": "110"})
    capacity.setdefault("pods", "110")
    status.setdefault("allocatable", dict(capacity))
    status.setdefault("conditions", _conditions())
    status.setdefault(
        "addresses",
        [
            {"type": "InternalIP", "address": f"10.0.{index // 250}.{10 + index % 250}"},
            {"type": "Hostname", "address": name},
        ],
    )
    status.setdefault("daemonEndpoints", {"kubeletEndpoint": {"Port": 10250}})
    status["nodeInfo"] = _node_info(name, status.get("nodeInfo") or {})
    if HARDWARE_KEY not in node:
        vendors = ["8086"] + [v for r, v in _DEVICE_VENDORS.items() if quantity(capacity.get(r)) > 0]
        node[HARDWARE_KEY] = {"pci_vendors": vendors}
        perf = _device_perf_by_product(meta.get("labels") or {})
        if perf:
            node[HARDWARE_KEY]["gpu"] = {"perf": perf}
    return node


_PRODUCT_LABELS = ("nvidia.com/gpu.product", "amd.com/gpu.product-name", "habana.ai/gaudi.product")


def _device_perf_by_product(labels: dict) -> dict | None:
    """A Node from a file that already carries a GPU product label (feature discovery ran where it was
    captured) serves inference as fast as the machine profile with that product; unknown products get the
    CPU fallback, as before."""
    products = {str(labels[k]) for k in _PRODUCT_LABELS if labels.get(k)}
    if not products:
        return None
    for profile in _profiles().values():
        gpu = (profile.get("hardware") or {}).get("gpu") or {}
        if gpu.get("perf") and str(gpu.get("product", "")) in products:
            return dict(gpu["perf"])
    return None
