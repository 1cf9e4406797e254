"""A node's labels sorted by owner in one pass, and the reading helpers every vendor parser shares.

The sort is straight-line prefix matching (a refresh parses every node of every cluster); after it the parsers
do dictionary lookups only. The helpers degrade instead of raising: an unreadable value is ``None`` plus a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.quantity import to_count

if TYPE_CHECKING:
    from ..inventory import NodeInventory

NFD = "feature.node.kubernetes.io/"
ROLE_PREFIX = "node-role.kubernetes.io/"

# PCI vendor ids of accelerators.
PCI_NVIDIA, PCI_AMD, PCI_HABANA = "10de", "1002", "1da3"


class Buckets:
    """Labels sorted by owner in one pass; the parsers then do dictionary lookups only."""

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


def bucket_labels(labels: Mapping[str, str]) -> Buckets:
    b = Buckets()
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


def pci_devices(pci_labels: list[str]) -> dict[str, set[str]]:
    """Vendor -> device ids (may be empty) seen in NFD ``pci-<fields>.present`` labels.

    The label body is the configured ``deviceLabelFields`` joined by ``_``: ``0302_10de`` by
    default, ``1da3`` or ``1da3_1020`` when vendor (and device) are configured.
    """
    found: dict[str, set[str]] = {}
    for body in pci_labels:
        tokens = body.lower().split("_")
        for index, token in enumerate(tokens):
            if token in (PCI_NVIDIA, PCI_AMD, PCI_HABANA):
                devices = found.setdefault(token, set())
                if index + 1 < len(tokens) and len(tokens[index + 1]) == 4:
                    devices.add(tokens[index + 1])
                break
    return found


def label_int(value: str | None, what: str, notes: list[str]) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        notes.append(f"{what} {value!r} is not an integer; ignored")
        return None


def count(source: Mapping[str, Any], key: str, where: str, notes: list[str]) -> int | None:
    raw = source.get(key)
    if raw is None:
        return None
    try:
        return to_count(raw)
    except ValueError:
        notes.append(f"{where}.{key} {raw!r} is not a whole device count; ignored")
        return None


def device_counts(
    inv: NodeInventory,
    resource: str,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    fallback: int | None,
    fallback_source: str,
    notes: list[str],
) -> None:
    """Whole devices of ``resource`` from capacity; else from a labeller's count (``fallback``); else unknown.

    Unknown is ``None`` with a note, not 0: the node has the devices (a labeller saw them), only nobody counted
    them. Without a device plugin nothing can be scheduled onto them, so allocatable is 0 either way.
    """
    inv.accelerator_resource = resource
    total = count(capacity, resource, "status.capacity", notes)
    alloc = count(allocatable, resource, "status.allocatable", notes)
    if total is None:
        if fallback is not None:
            problem = "unreadable" if resource in capacity else "missing (device plugin not running?)"
            notes.append(f"{resource} capacity {problem}; count {fallback} from {fallback_source}")
            total = fallback
        else:
            notes.append(f"no {resource} in capacity and no count label: device count unknown")
        alloc = 0 if alloc is None else alloc
    inv.accelerator_count = total
    inv.allocatable["accelerators"] = alloc if alloc is not None else total
