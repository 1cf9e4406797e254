"""Turn Kubernetes Node objects into a typed hardware inventory - a pure function, no I/O, no Django.

Design
------
``parse_node(node_dict)`` reads one Node (the JSON/YAML shape the API server returns) and yields a
:class:`NodeInventory`. It never raises on content: every label or field that is missing,
malformed or unknown degrades to ``None`` and appends a human-readable line to ``notes``, so one odd
node can never break a cluster refresh. Only a non-mapping input is a programming error
(``TypeError``).

Where the facts come from (in order of trust):

* **status** (capacity/allocatable/conditions/addresses/nodeInfo) - written by the kubelet and the
  device plugins; authoritative for counts, memory, readiness.
* **NVIDIA GPU feature discovery** labels (``nvidia.com/gpu.product``, ``.memory`` in MiB,
  ``.count``, ``mig-<profile>.count``, ``cuda.driver*``/``cuda.runtime*``) - model, memory, MIG,
  driver and CUDA versions.
* **AMD node labeller** labels (``amd.com/gpu.device-id``, ``.vram``, ``.driver-version`` and the
  ``beta.amd.com/gpu.<prop>.<value>=<count>`` form) plus the PCI-id table from the labeller's
  ``amdgpu.ids``.
* **Node Feature Discovery** labels (``feature.node.kubernetes.io/cpu-cpuid.*``,
  ``cpu-model.*``, ``cpu-hardware_multithreading``, ``pci-*.present``, ``kernel-version.full``)
  and the CPU-model hook (``local-cpu.model`` / ``.vendor`` / ``.family``) that the collector
  chart installs, because NFD itself never publishes the CPU's marketing name.
* cloud-provider labels (GKE ``cloud.google.com/gke-accelerator``, EKS/Karpenter) only as a last
  resort, always with a note.

Counts are whole devices from capacity (``nvidia.com/gpu``, ``amd.com/gpu``, ``habana.ai/gaudi``).
With the NVIDIA MIG *mixed* strategy MIG slices are separate resources (``nvidia.com/mig-1g.10gb``)
and ``nvidia.com/gpu`` already counts only the GPUs not in MIG mode; the slices are reported in
``mig`` as ``{profile: count}``.

``requested_by_pods`` / ``free_devices`` sum the requests of non-terminated pods bound to a node so
that "free GPUs" is allocatable minus what pods hold - pods that are Pending but already bound hold
their devices too; Succeeded/Failed pods hold nothing.

The parser is written as straight-line dictionary code (one pass over the labels, bucketed by
prefix) because a refresh parses every node of every cluster; ``benchmarks/inventory_parse.py``
measures it on 20,000 nodes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from hardware.quantity import parse_quantity, to_bytes, to_count, to_millicores

__all__ = [
    "NodeInventory",
    "free_devices",
    "load_node_objects",
    "parse_node",
    "parse_nodes",
    "requested_by_pods",
]

NFD = "feature.node.kubernetes.io/"
ROLE_PREFIX = "node-role.kubernetes.io/"

NVIDIA_GPU = "nvidia.com/gpu"
AMD_GPU = "amd.com/gpu"
HABANA_GAUDI = "habana.ai/gaudi"
MIG_PREFIX = "nvidia.com/mig-"

# Flags the placement logic cares about, in the order we report them.
CPU_FLAGS = ("AVX2", "AVX512F", "AVX512VNNI", "AMXBF16", "AMXINT8")

# NFD's cpu-model.vendor_id comes from klauspost/cpuid (``Intel``, ``AMD``...); the CPU-model
# hook and some tools report the raw CPUID string (``GenuineIntel``). Both map to one name.
_CPU_VENDORS = {
    "intel": "Intel",
    "genuineintel": "Intel",
    "amd": "AMD",
    "authenticamd": "AMD",
    "hygon": "Hygon",
    "hygongenuine": "Hygon",
    "arm": "ARM",
    "ampere": "Ampere",
    "nvidia": "NVIDIA",
    "qualcomm": "Qualcomm",
    "fujitsu": "Fujitsu",
    "apple": "Apple",
    "ibm_s390": "IBM",
    "aws": "AWS",
}

# PCI vendor ids of accelerators.
_PCI_NVIDIA, _PCI_AMD, _PCI_HABANA = "10de", "1002", "1da3"

# Habana/Intel Gaudi PCI device ids (vendor 1da3), from the habanalabs kernel driver
# (drivers/accel/habanalabs/common/habanalabs_drv.c) and HabanaAI/hl-thunk-open pci_ids.h.
GAUDI_PCI_MODELS = {
    "1000": "Gaudi",
    "1001": "Gaudi",  # HL-2000M
    "1010": "Gaudi",  # secured
    "1011": "Gaudi",
    "1020": "Gaudi2",
    "1021": "Gaudi2",  # HL-288
    "1060": "Gaudi3",
    "1062": "Gaudi3",  # single die
    "1063": "Gaudi3",  # HL-338
}
# HBM per device, nominal (Intel/Habana product pages; Hugging Face Gaudi docs: 32/96/128 GB).
GAUDI_MEMORY_MIB = {"Gaudi": 32 * 1024, "Gaudi2": 96 * 1024, "Gaudi3": 128 * 1024}

# AMD Instinct PCI device ids -> product name, from ROCm/k8s-device-plugin
# cmd/k8s-node-labeller/amdgpu.ids (itself libdrm's table). Data-centre parts only.
AMD_PCI_MODELS = {
    "66a1": "AMD Instinct MI60 / MI50",
    "738c": "AMD Instinct MI100",
    "7408": "AMD Instinct MI250X",
    "740c": "AMD Instinct MI250X / MI250",
    "740f": "AMD Instinct MI210",
    "74a0": "AMD Instinct MI300A",
    "74a1": "AMD Instinct MI300X",
    "74a2": "AMD Instinct MI308X",
    "74a5": "AMD Instinct MI325X",
    "74a9": "AMD Instinct MI300X HF",
    "74b5": "AMD Instinct MI300X VF",
    "74b9": "AMD Instinct MI325X VF",
    "74bd": "AMD Instinct MI300X HF",
    "75a0": "AMD Instinct MI350X",
    "75a3": "AMD Instinct MI355X",
    "75b0": "AMD Instinct MI350X VF",
    "75b3": "AMD Instinct MI355X VF",
}
# Nominal HBM per AMD device in MiB (AMD product pages), used only when no vram label exists.
AMD_MEMORY_MIB = {
    "MI50": 32 * 1024,
    "MI100": 32 * 1024,
    "MI210": 64 * 1024,
    "MI250": 128 * 1024,
    "MI250X": 128 * 1024,
    "MI300A": 128 * 1024,
    "MI300X": 192 * 1024,
    "MI308X": 192 * 1024,
    "MI325X": 256 * 1024,
    "MI350X": 288 * 1024,
    "MI355X": 288 * 1024,
}
_AMD_SERIES_RE = re.compile(r"MI\d{2,3}[AX]?")

# Nominal memory per NVIDIA GPU in MiB for product names that carry no size ("Tesla-T4").
# Names with a size ("NVIDIA-H100-80GB-HBM3", "nvidia-a100-80gb") are read from the name.
# GPU feature discovery reports slightly less (what the driver exposes, e.g. 15109 for a T4);
# this table is the marketed size and is only used, with a note, when that label is absent.
NVIDIA_MEMORY_MIB = {
    "t4": 16 * 1024,
    "l4": 24 * 1024,
    "a10": 24 * 1024,
    "a10g": 24 * 1024,
    "a2": 16 * 1024,
    "a30": 24 * 1024,
    "a40": 48 * 1024,
    "l40": 48 * 1024,
    "l40s": 48 * 1024,
    "p4": 8 * 1024,
    "k80": 12 * 1024,
    "h200": 141 * 1024,
    "rtx-a6000": 48 * 1024,
}
_GB_IN_NAME_RE = re.compile(r"(\d+)\s*gb", re.IGNORECASE)

_NO_SCHEDULE_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})


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
    accelerator_count: int = 0
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_node_objects(text_or_path: str | Path) -> list[dict[str, Any]]:
    """Read Node objects from YAML or JSON text, or from a file path.

    Accepts one Node, a list of Nodes, a ``kind: List`` / ``NodeList`` (``items``), and YAML
    streams with several documents. Raises ValueError for text that is neither YAML nor JSON or
    for objects that are not Nodes (naming the offending item).
    """
    if isinstance(text_or_path, Path):
        text = text_or_path.read_text(encoding="utf-8")
    elif "\n" not in text_or_path and len(text_or_path) < 4096 and Path(text_or_path).is_file():
        text = Path(text_or_path).read_text(encoding="utf-8")
    else:
        text = text_or_path
    documents: list[Any]
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            documents = [json.loads(text)]
        except json.JSONDecodeError:
            documents = _load_yaml(text)
    else:
        documents = _load_yaml(text)
    if len(documents) == 1 and isinstance(documents[0], str) and "\n" not in text.strip():
        # Most likely a mistyped path: say so instead of "a str is not a Node".
        raise ValueError(f"no such file, and not Node YAML/JSON either: {text.strip()[:200]!r}")
    nodes: list[dict[str, Any]] = []
    for document in documents:
        _collect_nodes(document, nodes, "document")
    return nodes


def _load_yaml(text: str) -> list[Any]:
    try:
        # safe_load_all never builds arbitrary Python objects from tags.
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML or JSON: {exc}") from exc


def _collect_nodes(obj: Any, out: list[dict[str, Any]], where: str) -> None:
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            _collect_nodes(item, out, f"{where} item {index}")
        return
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a {type(obj).__name__}, not a Node object")
    kind = obj.get("kind")
    if "items" in obj and (kind is None or str(kind).endswith("List")):
        items = obj.get("items") or []
        if not isinstance(items, list):
            raise ValueError(f"{where}: 'items' is not a list")
        for index, item in enumerate(items):
            _collect_nodes(item, out, f"{where} item {index}")
        return
    if kind not in (None, "Node"):
        raise ValueError(f"{where} is a {kind}, not a Node")
    out.append(obj)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


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
    buckets = _bucket_labels(labels)
    inv.roles = buckets.roles

    inv.memory_bytes = _quantity(capacity, "memory", to_bytes, "status.capacity", notes)
    inv.allocatable = {
        "cpu_millicores": _quantity(allocatable, "cpu", to_millicores, "status.allocatable", notes),
        "memory_bytes": _quantity(allocatable, "memory", to_bytes, "status.allocatable", notes),
        "accelerators": 0,
    }
    _parse_cpu(inv, capacity, buckets, annotations, labels, notes)
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


class _Buckets:
    """Labels sorted by owner in one pass; the parsers below then do dictionary lookups only."""

    __slots__ = ("amd", "amd_beta", "cpuid", "local", "nfd", "nvidia", "pci", "roles")

    def __init__(self) -> None:
        self.nfd: dict[str, str] = {}
        self.cpuid: set[str] = set()
        self.pci: list[str] = []
        self.nvidia: dict[str, str] = {}
        self.amd: dict[str, str] = {}
        self.amd_beta: dict[str, str] = {}
        self.local: dict[str, str] = {}
        self.roles: list[str] = []


def _bucket_labels(labels: Mapping[str, str]) -> _Buckets:
    b = _Buckets()
    roles: set[str] = set()
    for key, value in labels.items():
        if key.startswith(NFD):
            sub = key[len(NFD) :]
            if sub.startswith("cpu-cpuid."):
                if value == "true":
                    b.cpuid.add(sub[len("cpu-cpuid.") :])
            elif sub.startswith("pci-"):
                if value == "true" and sub.endswith(".present"):
                    b.pci.append(sub[len("pci-") : -len(".present")])
            elif sub.startswith("local-cpu."):
                b.local[sub[len("local-") :]] = value
            else:
                b.nfd[sub] = value
        elif key.startswith("nvidia.com/"):
            b.nvidia[key[len("nvidia.com/") :]] = value
        elif key.startswith("amd.com/gpu."):
            b.amd[key[len("amd.com/gpu.") :]] = value
        elif key.startswith("beta.amd.com/gpu."):
            b.amd_beta[key[len("beta.amd.com/gpu.") :]] = value
        elif key.startswith(ROLE_PREFIX):
            role = key[len(ROLE_PREFIX) :]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
        elif "local-cpu." in key:
            # The CPU-model hook under another label namespace (e.g. ``bud.studio/local-cpu.model``).
            b.local[key[key.index("local-cpu.") + len("local-") :]] = value
    b.roles = sorted(roles)
    return b


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------


def _parse_cpu(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    b: _Buckets,
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
    notes: list[str],
) -> None:
    raw_cpu = capacity.get("cpu")
    if raw_cpu is not None:
        try:
            millicores = to_millicores(raw_cpu)
        except ValueError:
            notes.append(f"status.capacity.cpu {raw_cpu!r} is not a valid quantity; ignored")
        else:
            if millicores % 1000:
                notes.append(f"status.capacity.cpu {raw_cpu!r} is not a whole number of CPUs")
            inv.cpu_threads = millicores // 1000

    multithreading = b.nfd.get("cpu-hardware_multithreading")
    if inv.cpu_threads is not None:
        if multithreading == "true":
            if inv.cpu_threads % 2:
                notes.append(
                    f"hyper-threading on but {inv.cpu_threads} logical CPUs is odd; cores rounded down"
                )
            inv.cpu_cores = inv.cpu_threads // 2
        elif multithreading == "false":
            inv.cpu_cores = inv.cpu_threads
        else:
            notes.append(
                "no feature.node.kubernetes.io/cpu-hardware_multithreading label: physical core count unknown"
            )
    else:
        notes.append("status.capacity.cpu missing: CPU threads and cores unknown")

    # Vendor: NFD, then the CPU-model hook, then a cloud-provider label.
    vendor_raw = b.nfd.get("cpu-model.vendor_id")
    vendor_source = "feature.node.kubernetes.io/cpu-model.vendor_id"
    if not vendor_raw or vendor_raw == "VendorUnknown":
        vendor_raw = b.local.get("cpu.vendor") or annotations.get("local-cpu.vendor")
        vendor_source = "local-cpu.vendor"
    if not vendor_raw:
        vendor_raw = labels.get("karpenter.k8s.aws/instance-cpu-manufacturer")
        vendor_source = "karpenter.k8s.aws/instance-cpu-manufacturer"
    if vendor_raw:
        vendor = _CPU_VENDORS.get(vendor_raw.strip().lower())
        if vendor is None:
            notes.append(f"unrecognised CPU vendor {vendor_raw!r} from {vendor_source}; reported as is")
            vendor = vendor_raw
        inv.cpu_vendor = vendor
    else:
        notes.append("CPU vendor not labelled (no NFD cpu-model.vendor_id)")

    model = b.local.get("cpu.model") or annotations.get("local-cpu.model")
    if model:
        # Label values cannot hold spaces; the hook writes them as underscores.
        inv.cpu_model = model.replace("_", " ").strip()
    else:
        notes.append("CPU model name not labelled (needs the local-cpu.model hook)")

    family = b.nfd.get("cpu-model.family") or b.local.get("cpu.family")
    if family:
        try:
            inv.cpu_family = int(family)
        except ValueError:
            notes.append(f"CPU family {family!r} is not an integer; ignored")

    if b.cpuid:
        inv.cpu_flags = [flag for flag in CPU_FLAGS if flag in b.cpuid]
    else:
        notes.append("no NFD cpu-cpuid labels: CPU instruction-set flags unknown")


# --------------------------------------------------------------------------------------------
# Accelerators
# --------------------------------------------------------------------------------------------


def _count(source: Mapping[str, Any], key: str, where: str, notes: list[str]) -> int | None:
    raw = source.get(key)
    if raw is None:
        return None
    try:
        return to_count(raw)
    except ValueError:
        notes.append(f"{where}.{key} {raw!r} is not a whole device count; ignored")
        return None


def _pci_devices(pci_labels: list[str]) -> dict[str, set[str]]:
    """Vendor -> device ids (may be empty) seen in NFD ``pci-<fields>.present`` labels.

    The label body is the configured ``deviceLabelFields`` joined by ``_``: ``0302_10de`` by
    default, ``1da3`` or ``1da3_1020`` when vendor (and device) are configured.
    """
    found: dict[str, set[str]] = {}
    for body in pci_labels:
        tokens = body.lower().split("_")
        for index, token in enumerate(tokens):
            if token in (_PCI_NVIDIA, _PCI_AMD, _PCI_HABANA):
                devices = found.setdefault(token, set())
                if index + 1 < len(tokens) and len(tokens[index + 1]) == 4:
                    devices.add(tokens[index + 1])
                break
    return found


def _parse_accelerators(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    labels: Mapping[str, str],
    b: _Buckets,
    notes: list[str],
) -> None:
    pci = _pci_devices(b.pci)
    mig_capacity = {k[len(MIG_PREFIX) :]: v for k, v in capacity.items() if k.startswith(MIG_PREFIX)}
    candidates: list[str] = []
    if (
        NVIDIA_GPU in capacity
        or mig_capacity
        or b.nvidia.get("gpu.present") == "true"
        or "gpu.product" in b.nvidia
        or _PCI_NVIDIA in pci
        or labels.get("cloud.google.com/gke-accelerator", "").startswith("nvidia")
    ):
        candidates.append("cuda")
    if AMD_GPU in capacity or b.amd or b.amd_beta or _PCI_AMD in pci:
        candidates.append("rocm")
    if HABANA_GAUDI in capacity or _PCI_HABANA in pci:
        candidates.append("hpu")
    if not candidates:
        return
    if len(candidates) > 1:
        # Prefer a vendor whose device plugin actually advertises devices.
        resource = {"cuda": NVIDIA_GPU, "rocm": AMD_GPU, "hpu": HABANA_GAUDI}
        with_devices = [c for c in candidates if _count(capacity, resource[c], "status.capacity", []) or 0]
        chosen = with_devices[0] if with_devices else candidates[0]
        notes.append(f"accelerators of several vendors found ({', '.join(candidates)}); reporting {chosen}")
        candidates = [chosen]
    kind = candidates[0]
    if kind == "cuda":
        _parse_nvidia(inv, capacity, allocatable, labels, b, mig_capacity, notes)
    elif kind == "rocm":
        _parse_amd(inv, capacity, allocatable, b, pci, notes)
    else:
        _parse_habana(inv, capacity, allocatable, pci, notes)


def _device_counts(
    inv: NodeInventory,
    resource: str,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    fallback: int | None,
    fallback_source: str,
    notes: list[str],
) -> None:
    inv.accelerator_resource = resource
    count = _count(capacity, resource, "status.capacity", notes)
    alloc = _count(allocatable, resource, "status.allocatable", notes)
    if count is None:
        if fallback is not None:
            problem = "unreadable" if resource in capacity else "missing (device plugin not running?)"
            notes.append(f"{resource} capacity {problem}; count {fallback} from {fallback_source}")
            count = fallback
        else:
            notes.append(f"no {resource} in capacity and no count label: device count unknown, reported as 0")
            count = 0
        # Without a device plugin nothing can be scheduled onto the devices.
        alloc = 0 if alloc is None else alloc
    inv.accelerator_count = count
    inv.allocatable["accelerators"] = alloc if alloc is not None else count


def _label_int(value: str | None, what: str, notes: list[str]) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        notes.append(f"{what} {value!r} is not an integer; ignored")
        return None


def _nvidia_memory_from_name(name: str) -> int | None:
    match = _GB_IN_NAME_RE.search(name)
    if match:
        return int(match.group(1)) * 1024
    key = name.lower()
    for prefix in ("nvidia-", "tesla-", "nvidia "):
        key = key.removeprefix(prefix)
    key = key.removeprefix("tesla-").replace(" ", "-")
    return NVIDIA_MEMORY_MIB.get(key)


def _parse_nvidia(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    labels: Mapping[str, str],
    b: _Buckets,
    mig_capacity: Mapping[str, Any],
    notes: list[str],
) -> None:
    nv = b.nvidia
    inv.accelerator_type = "cuda"
    inv.accelerator_vendor = "NVIDIA"

    model = nv.get("gpu.product")
    if not model:
        for key in ("cloud.google.com/gke-accelerator", "k8s.amazonaws.com/accelerator", "accelerator"):
            if labels.get(key):
                model = labels[key]
                notes.append(f"GPU model from {key} (no nvidia.com/gpu.product label)")
                break
        else:
            notes.append("GPU present but no nvidia.com/gpu.product label: model unknown")
    inv.accelerator_model = model or None

    label_count = _label_int(nv.get("gpu.count"), "nvidia.com/gpu.count", notes)
    if NVIDIA_GPU not in capacity and mig_capacity:
        # MIG mixed strategy with every GPU partitioned: the device plugin advertises only slices.
        inv.accelerator_resource = NVIDIA_GPU
        inv.accelerator_count = 0
        inv.allocatable["accelerators"] = 0
        notes.append("every GPU is in MIG mode: no whole GPUs advertised, only MIG slices")
    else:
        _device_counts(inv, NVIDIA_GPU, capacity, allocatable, label_count, "nvidia.com/gpu.count", notes)

    # Time-slicing / MPS advertise each GPU several times; report whole devices.
    replicas = _label_int(nv.get("gpu.replicas"), "nvidia.com/gpu.replicas", notes)
    if replicas and replicas > 1 and NVIDIA_GPU in capacity:
        inv.accelerator_count //= replicas
        notes.append(
            f"GPU sharing ({nv.get('gpu.sharing-strategy', 'replicas')}) advertises each GPU "
            f"{replicas} times; "
            f"{inv.accelerator_count} whole GPUs"
        )

    memory = _label_int(nv.get("gpu.memory"), "nvidia.com/gpu.memory", notes)
    if memory is None and model:
        memory = _nvidia_memory_from_name(model)
        if memory is not None:
            notes.append(f"GPU memory not labelled; {memory} MiB is the nominal size of {model}")
        else:
            notes.append(f"GPU memory not labelled and {model!r} is not in the built-in table")
    elif memory is None:
        notes.append("GPU memory unknown (no nvidia.com/gpu.memory label)")
    inv.accelerator_memory_mib = memory

    inv.mig_strategy = nv.get("mig.strategy")
    mig: dict[str, int] = {}
    for profile, raw in mig_capacity.items():
        try:
            count = to_count(raw)
        except ValueError:
            notes.append(f"status.capacity.{MIG_PREFIX}{profile} {raw!r} is not a whole count; ignored")
            continue
        if count:
            mig[profile] = count
    label_mig: dict[str, int] = {}
    for key, value in nv.items():
        if key.startswith("mig-") and key.endswith(".count"):
            count = _label_int(value, f"nvidia.com/{key}", notes)
            if count:
                label_mig[key[len("mig-") : -len(".count")]] = count
    if not mig_capacity and label_mig:
        mig = label_mig
        if inv.mig_strategy != "single":
            notes.append("MIG profiles from nvidia.com/mig-*.count labels (none in capacity)")
    elif label_mig and set(label_mig) != set(mig):
        notes.append(
            "MIG labels ("
            + ", ".join(sorted(label_mig))
            + ") disagree with capacity ("
            + (", ".join(sorted(mig)) or "none")
            + "); capacity used"
        )
    inv.mig = mig or None
    if inv.mig_strategy == "single" and inv.mig:
        notes.append("MIG single strategy: nvidia.com/gpu counts MIG slices, not whole GPUs")

    driver = nv.get("cuda.driver-version.full")
    if not driver and nv.get("cuda.driver.major"):
        parts = [nv.get("cuda.driver.major"), nv.get("cuda.driver.minor"), nv.get("cuda.driver.rev")]
        driver = ".".join(p for p in parts if p)
    inv.driver_version = driver or None
    cuda = nv.get("cuda.runtime-version.full")
    if not cuda and nv.get("cuda.runtime.major"):
        cuda = ".".join(p for p in (nv.get("cuda.runtime.major"), nv.get("cuda.runtime.minor")) if p)
    inv.cuda_version = cuda or None
    if inv.accelerator_count and inv.driver_version is None:
        notes.append("NVIDIA driver version not labelled")


def _parse_amd(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    b: _Buckets,
    pci: Mapping[str, set[str]],
    notes: list[str],
) -> None:
    inv.accelerator_type = "rocm"
    inv.accelerator_vendor = "AMD"
    amd, beta = b.amd, b.amd_beta

    # beta.amd.com/gpu.<prop>.<value> = <number of GPUs with that value>
    beta_values: dict[str, dict[str, str]] = {}
    for key, value in beta.items():
        prop, _, prop_value = key.partition(".")
        if prop_value:
            beta_values.setdefault(prop, {})[prop_value] = value

    device_ids = set()
    if amd.get("device-id"):
        device_ids.add(amd["device-id"].lower())
    if beta.get("device-id"):
        device_ids.add(beta["device-id"].lower())
    device_ids.update(k.lower() for k in beta_values.get("device-id", {}))
    device_ids.update(pci.get(_PCI_AMD, set()))
    if len(device_ids) > 1:
        notes.append(
            f"several AMD GPU device ids on one node ({', '.join(sorted(device_ids))}); using the first"
        )
    device_id = sorted(device_ids)[0] if device_ids else None

    model = amd.get("product-name") or beta.get("product-name")
    if model:
        model = model.replace("_", " ")
    elif device_id:
        model = AMD_PCI_MODELS.get(device_id)
        if model:
            notes.append(f"GPU model from PCI device id {device_id} (no amd.com/gpu.product-name label)")
        else:
            notes.append(f"AMD GPU device id {device_id} is not in the built-in table: model unknown")
    else:
        notes.append("AMD GPU present but neither product name nor device id labelled: model unknown")
    inv.accelerator_model = model

    beta_count = None
    if device_id and device_id in beta_values.get("device-id", {}):
        beta_count = _label_int(beta_values["device-id"][device_id], "beta.amd.com/gpu.device-id.*", notes)
    _device_counts(inv, AMD_GPU, capacity, allocatable, beta_count, "beta.amd.com/gpu.device-id label", notes)

    # The labeller writes VRAM as whole GiB rounded to nearest ("191G").
    vram = amd.get("vram") or beta.get("vram") or next(iter(beta_values.get("vram", {})), None)
    memory = None
    if vram:
        match = re.fullmatch(r"(\d+)G", vram)
        if match:
            memory = int(match.group(1)) * 1024
        else:
            notes.append(f"amd.com/gpu.vram {vram!r} not understood; ignored")
    if memory is None and model:
        series = _AMD_SERIES_RE.search(model)
        memory = AMD_MEMORY_MIB.get(series.group(0)) if series else None
        if memory is not None:
            notes.append(f"GPU memory not labelled; {memory} MiB is the nominal size of {series.group(0)}")
    if memory is None:
        notes.append("AMD GPU memory unknown")
    inv.accelerator_memory_mib = memory
    inv.driver_version = amd.get("driver-version") or beta.get("driver-version") or None


def _parse_habana(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    pci: Mapping[str, set[str]],
    notes: list[str],
) -> None:
    inv.accelerator_type = "hpu"
    inv.accelerator_vendor = "Intel"
    devices = sorted(pci.get(_PCI_HABANA, set()))
    model = None
    if devices:
        models = {GAUDI_PCI_MODELS.get(d) for d in devices}
        models.discard(None)
        if len(models) == 1:
            model = models.pop()
        elif not models:
            notes.append(
                f"Gaudi PCI device id {', '.join(devices)} not in the built-in table: generation unknown"
            )
        else:
            notes.append(
                f"several Gaudi generations on one node ({', '.join(sorted(models))}): model unknown"
            )
    else:
        notes.append(
            "Gaudi generation unknown: NFD PCI label has no device id "
            "(configure deviceLabelFields: [vendor, device])"
        )
    inv.accelerator_model = model
    _device_counts(inv, HABANA_GAUDI, capacity, allocatable, None, "", notes)
    if model:
        inv.accelerator_memory_mib = GAUDI_MEMORY_MIB[model]
        notes.append(
            f"HPU memory not labelled; {inv.accelerator_memory_mib} MiB is the nominal size of {model}"
        )
    else:
        notes.append("HPU memory unknown")


# --------------------------------------------------------------------------------------------
# Pods: requested and free
# --------------------------------------------------------------------------------------------


def _container_requests(container: Mapping[str, Any]) -> dict[str, Any]:
    resources = container.get("resources") or {}
    requests = dict(resources.get("requests") or {})
    # Kubernetes defaults a missing request to the limit.
    for key, value in (resources.get("limits") or {}).items():
        requests.setdefault(key, value)
    return requests


def _pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """Effective requests of one pod, as the scheduler counts them.

    max(sum of app containers + restartable (sidecar) init containers, each plain init container
    + the sidecars started before it), plus pod overhead.
    """
    spec = pod.get("spec") or {}
    totals: dict[str, Decimal] = {}
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for init in spec.get("initContainers") or []:
        requests = {k: parse_quantity(v) for k, v in _container_requests(init).items()}
        if init.get("restartPolicy") == "Always":
            for key, amount in requests.items():
                sidecars[key] = sidecars.get(key, Decimal(0)) + amount
        else:
            for key, amount in requests.items():
                peak = amount + sidecars.get(key, Decimal(0))
                if peak > init_peak.get(key, Decimal(0)):
                    init_peak[key] = peak
    for container in spec.get("containers") or []:
        for key, value in _container_requests(container).items():
            totals[key] = totals.get(key, Decimal(0)) + parse_quantity(value)
    for key, amount in sidecars.items():
        totals[key] = totals.get(key, Decimal(0)) + amount
    for key, amount in init_peak.items():
        if amount > totals.get(key, Decimal(0)):
            totals[key] = amount
    for key, value in (spec.get("overhead") or {}).items():
        totals[key] = totals.get(key, Decimal(0)) + parse_quantity(value)
    return totals


def requested_by_pods(node_name: str, pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the requests of the pods that hold resources on ``node_name``.

    A pod holds resources once it is bound (``spec.nodeName``) until it terminates: Pending-but-bound
    and Running pods count, Succeeded and Failed pods do not. Pods are API dicts.
    Returns ``{"pods", "cpu_millicores", "memory_bytes", "resources": {name: int}}`` where
    ``resources`` holds every extended resource (GPUs, MIG slices, Gaudi) with whole counts.
    A pod whose requests cannot be parsed is skipped and listed in ``"skipped"``.
    """
    totals: dict[str, Decimal] = {}
    count = 0
    skipped: list[str] = []
    for pod in pods:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") != node_name:
            continue
        if (pod.get("status") or {}).get("phase") in _TERMINAL_POD_PHASES:
            continue
        try:
            requests = _pod_requests(pod)
        except (ValueError, AttributeError, TypeError):
            metadata = pod.get("metadata") or {}
            skipped.append(f"{metadata.get('namespace', '')}/{metadata.get('name', '?')}")
            continue
        count += 1
        for key, amount in requests.items():
            totals[key] = totals.get(key, Decimal(0)) + amount
    resources = {
        key: int(amount)
        for key, amount in sorted(totals.items())
        if key not in ("cpu", "memory", "ephemeral-storage") and not key.startswith("hugepages-")
    }
    cpu = totals.get("cpu", Decimal(0)) * 1000
    memory = totals.get("memory", Decimal(0))
    return {
        "pods": count,
        "cpu_millicores": int(cpu) + (1 if cpu > int(cpu) else 0),
        "memory_bytes": int(memory) + (1 if memory > int(memory) else 0),
        "resources": resources,
        "skipped": skipped,
    }


def free_devices(inventory: NodeInventory, pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What is left on a node: allocatable minus the requests of the pods bound to it.

    ``accelerators`` is about whole devices of the node's accelerator resource; ``mig`` repeats the
    computation per MIG profile. Free counts never go below zero (a node whose allocatable shrank
    under running pods is simply full).
    """
    requested = requested_by_pods(inventory.node or "", pods)
    resource = inventory.accelerator_resource
    alloc_devices = int(inventory.allocatable.get("accelerators") or 0)
    used_devices = requested["resources"].get(resource, 0) if resource else 0
    mig: dict[str, dict[str, int]] | None = None
    if inventory.mig:
        mig = {}
        for profile, total in inventory.mig.items():
            used = requested["resources"].get(f"{MIG_PREFIX}{profile}", 0)
            mig[profile] = {"total": total, "requested": used, "free": max(total - used, 0)}
    alloc_cpu = inventory.allocatable.get("cpu_millicores")
    alloc_memory = inventory.allocatable.get("memory_bytes")
    return {
        "node": inventory.node,
        "accelerator_type": inventory.accelerator_type,
        "accelerator_model": inventory.accelerator_model,
        "accelerator_resource": resource,
        "accelerators": {
            "total": inventory.accelerator_count,
            "allocatable": alloc_devices,
            "requested": used_devices,
            "free": max(alloc_devices - used_devices, 0),
        },
        "mig": mig,
        "cpu_millicores": {
            "allocatable": alloc_cpu,
            "requested": requested["cpu_millicores"],
            "free": None if alloc_cpu is None else max(alloc_cpu - requested["cpu_millicores"], 0),
        },
        "memory_bytes": {
            "allocatable": alloc_memory,
            "requested": requested["memory_bytes"],
            "free": None if alloc_memory is None else max(alloc_memory - requested["memory_bytes"], 0),
        },
        "pods": requested["pods"],
        "skipped_pods": requested["skipped"],
    }
