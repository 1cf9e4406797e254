"""Turn Kubernetes Node objects into a typed hardware inventory - a pure function, no I/O, no Django.

Design
------
``parse_node(node_dict)`` reads one Node (the JSON/YAML shape the API server returns) and yields a
:class:`NodeInventory`. It never raises on content: every label or field that is missing,
malformed or unknown degrades to ``None`` and appends a human-readable line to ``notes``, so one odd
node can never break a cluster refresh. Only a non-mapping input is a programming error
(``TypeError``). Reading Node objects from files is ``hardware.nodefiles``; what pods hold on a node is
``hardware.pods``.

Where the facts come from (in order of trust):

* **status** (capacity/allocatable/conditions/addresses/nodeInfo) - written by the kubelet and the
  device plugins; authoritative for counts, memory, readiness. Read here.
* **labels**, sorted by owner in one pass (``hardware.vendors.labels``) and read by one parser per source:
  NVIDIA GPU feature discovery (``hardware.vendors.nvidia``), the AMD node labeller
  (``hardware.vendors.amd``), NFD's PCI labels for Intel Gaudi (``hardware.vendors.gaudi``), NFD's CPU
  labels and the collector chart's CPU-model hook (``hardware.vendors.cpu``).
* cloud-provider labels (GKE ``cloud.google.com/gke-accelerator``, EKS/Karpenter) only as a last
  resort, always with a note.
* the model table ``hardware.gpus`` for memory no label states, always with a note.

Which accelerator a node has is decided here (``_parse_accelerators``): the vendor whose device plugin
advertises devices wins when labels of several vendors are present.

The parser is written as straight-line dictionary code (one pass over the labels, bucketed by
prefix) because a refresh parses every node of every cluster; ``benchmarks/inventory_parse.py``
measures it on 20,000 nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.quantity import to_bytes, to_millicores

from .vendors.amd import AMD_GPU, parse_amd
from .vendors.cpu import parse_cpu
from .vendors.gaudi import HABANA_GAUDI, parse_gaudi
from .vendors.labels import PCI_AMD, PCI_HABANA, PCI_NVIDIA, Buckets, bucket_labels, count, pci_devices
from .vendors.nvidia import MIG_PREFIX, NVIDIA_GPU, parse_nvidia

__all__ = ["NodeInventory", "parse_node", "parse_nodes"]

_NO_SCHEDULE_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_RESOURCE = {"cuda": NVIDIA_GPU, "rocm": AMD_GPU, "hpu": HABANA_GAUDI}


@dataclass(slots=True)
class NodeInventory:
    """One node's hardware facts. ``to_dict()`` is the JSON shape of ``inspect_nodes --json``."""

    node: str | None
    ready: bool = False
    schedulable: bool = True
    taints: list[dict[str, str | None]] = field(default_factory=list)
    accelerator_type: str = "cpu"  # cuda | rocm | hpu | cpu
    accelerator_vendor: str | None = None  # NVIDIA | AMD | Intel
    accelerator_model: str | None = None
    accelerator_count: int | None = 0  # None: a labeller saw devices but nothing counted them
    accelerator_memory_mib: int | None = None
    mig: dict[str, int] | None = None
    cpu_vendor: str | None = None
    cpu_model: str | None = None
    cpu_cores: int | None = None
    memory_bytes: int | None = None
    cpu_flags: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    # Extra facts (after the keys the command promises).
    cordoned: bool = False
    internal_ip: str | None = None
    roles: list[str] = field(default_factory=list)
    cpu_family: int | None = None
    cpu_threads: int | None = None
    allocatable: dict[str, Any] = field(default_factory=dict)
    accelerator_resource: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    kernel_version: str | None = None
    mig_strategy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies recursively and is several times slower.
        return {
            "node": self.node,
            "ready": self.ready,
            "schedulable": self.schedulable,
            "taints": [dict(t) for t in self.taints],
            "accelerator_type": self.accelerator_type,
            "accelerator_vendor": self.accelerator_vendor,
            "accelerator_model": self.accelerator_model,
            "accelerator_count": self.accelerator_count,
            "accelerator_memory_mib": self.accelerator_memory_mib,
            "mig": dict(self.mig) if self.mig is not None else None,
            "cpu_vendor": self.cpu_vendor,
            "cpu_model": self.cpu_model,
            "cpu_cores": self.cpu_cores,
            "memory_bytes": self.memory_bytes,
            "cpu_flags": list(self.cpu_flags) if self.cpu_flags is not None else None,
            "notes": list(self.notes),
            "cordoned": self.cordoned,
            "internal_ip": self.internal_ip,
            "roles": list(self.roles),
            "cpu_family": self.cpu_family,
            "cpu_threads": self.cpu_threads,
            "allocatable": dict(self.allocatable),
            "accelerator_resource": self.accelerator_resource,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "kernel_version": self.kernel_version,
            "mig_strategy": self.mig_strategy,
        }


def parse_nodes(objs: Iterable[Mapping[str, Any]]) -> list[NodeInventory]:
    """Parse every Node object; see :func:`parse_node`."""
    return [parse_node(obj) for obj in objs]


def parse_node(node: Mapping[str, Any]) -> NodeInventory:
    """Parse one Node object (a dict in the API's JSON shape) into a :class:`NodeInventory`."""
    if not isinstance(node, Mapping):
        raise TypeError(f"a Node object must be a mapping, got {type(node).__name__}")
    notes: list[str] = []
    metadata = _mapping(node.get("metadata"), "metadata", notes)
    spec = _mapping(node.get("spec"), "spec", notes)
    status = _mapping(node.get("status"), "status", notes)
    labels = _string_map(metadata.get("labels"), "metadata.labels", notes)
    annotations = _string_map(metadata.get("annotations"), "metadata.annotations", notes)
    capacity = _mapping(status.get("capacity"), "status.capacity", notes)
    allocatable = _mapping(status.get("allocatable"), "status.allocatable", notes)

    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        notes.append("metadata.name missing: node has no name")
        name = None
    inv = NodeInventory(node=name, notes=notes)

    _parse_status(inv, spec, status, notes)
    buckets = bucket_labels(labels)
    inv.roles = buckets.roles

    inv.memory_bytes = _quantity(capacity, "memory", to_bytes, "status.capacity", notes)
    inv.allocatable = {
        "cpu_millicores": _quantity(allocatable, "cpu", to_millicores, "status.allocatable", notes),
        "memory_bytes": _quantity(allocatable, "memory", to_bytes, "status.allocatable", notes),
        "accelerators": 0,
    }
    parse_cpu(inv, capacity, buckets, annotations, labels, notes)
    node_info = _mapping(status.get("nodeInfo"), "status.nodeInfo", notes)
    inv.kernel_version = node_info.get("kernelVersion") or buckets.nfd.get("kernel-version.full") or None

    _parse_accelerators(inv, capacity, allocatable, labels, buckets, notes)
    return inv


def _mapping(value: Any, where: str, notes: list[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    notes.append(f"{where} is not a mapping; ignored")
    return {}


def _string_map(value: Any, where: str, notes: list[str]) -> dict[str, str]:
    mapping = _mapping(value, where, notes)
    # Labels and annotations are strings in the API; YAML written by hand may carry ints/bools.
    return {str(k): v if isinstance(v, str) else _label_text(v) for k, v in mapping.items()}


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _quantity(source: Mapping[str, Any], key: str, convert: Any, where: str, notes: list[str]) -> int | None:
    raw = source.get(key)
    if raw is None:
        return None
    try:
        return convert(raw)
    except ValueError:
        notes.append(f"{where}.{key} {raw!r} is not a valid quantity; ignored")
        return None


def _parse_status(
    inv: NodeInventory, spec: Mapping[str, Any], status: Mapping[str, Any], notes: list[str]
) -> None:
    ready = None
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        for condition in conditions:
            if isinstance(condition, dict) and condition.get("type") == "Ready":
                ready = condition.get("status")
                break
    if ready is None:
        notes.append("no Ready condition in status: node counted as not ready")
    inv.ready = ready == "True"

    taints: list[dict[str, str | None]] = []
    raw_taints = spec.get("taints")
    if isinstance(raw_taints, list):
        for taint in raw_taints:
            if not isinstance(taint, dict) or not taint.get("key"):
                notes.append(f"malformed taint {taint!r} ignored")
                continue
            value = taint.get("value")
            taints.append(
                {
                    "key": str(taint["key"]),
                    "value": None if value is None else str(value),
                    "effect": None if taint.get("effect") is None else str(taint.get("effect")),
                }
            )
    elif raw_taints is not None:
        notes.append("spec.taints is not a list; ignored")
    inv.taints = taints
    inv.cordoned = spec.get("unschedulable") is True
    inv.schedulable = not inv.cordoned and not any(t["effect"] in _NO_SCHEDULE_EFFECTS for t in taints)

    addresses = status.get("addresses")
    if isinstance(addresses, list):
        for address in addresses:
            if isinstance(address, dict) and address.get("type") == "InternalIP" and address.get("address"):
                inv.internal_ip = str(address["address"])
                break


def _parse_accelerators(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    labels: Mapping[str, str],
    b: Buckets,
    notes: list[str],
) -> None:
    pci = pci_devices(b.pci)
    mig_capacity = {k[len(MIG_PREFIX) :]: v for k, v in capacity.items() if k.startswith(MIG_PREFIX)}
    candidates: list[str] = []
    if (
        NVIDIA_GPU in capacity
        or mig_capacity
        or b.nvidia.get("gpu.present") == "true"
        or "gpu.product" in b.nvidia
        or PCI_NVIDIA in pci
        or labels.get("cloud.google.com/gke-accelerator", "").startswith("nvidia")
    ):
        candidates.append("cuda")
    if AMD_GPU in capacity or b.amd or b.amd_beta or PCI_AMD in pci:
        candidates.append("rocm")
    if HABANA_GAUDI in capacity or PCI_HABANA in pci:
        candidates.append("hpu")
    if not candidates:
        return
    if len(candidates) > 1:
        # Prefer a vendor whose device plugin actually advertises devices.
        with_devices = [c for c in candidates if count(capacity, _RESOURCE[c], "status.capacity", []) or 0]
        chosen = with_devices[0] if with_devices else candidates[0]
        notes.append(f"accelerators of several vendors found ({', '.join(candidates)}); reporting {chosen}")
        candidates = [chosen]
    kind = candidates[0]
    if kind == "cuda":
        parse_nvidia(inv, capacity, allocatable, labels, b, mig_capacity, notes)
    elif kind == "rocm":
        parse_amd(inv, capacity, allocatable, b, pci, notes)
    else:
        parse_gaudi(inv, capacity, allocatable, pci, notes)
