"""The CPU of a node: threads from capacity; cores, vendor, family and instruction-set flags from Node Feature
Discovery (``feature.node.kubernetes.io/cpu-*``); the marketing name from the collector chart's CPU-model hook
(``local-cpu.model`` / ``.vendor`` / ``.family``), because NFD never publishes it. A cloud provider's label is
the last resort for the vendor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.quantity import to_millicores

from .labels import Buckets

if TYPE_CHECKING:
    from ..inventory import NodeInventory

# Flags the placement logic cares about, in the order we report them.
CPU_FLAGS = ("AVX2", "AVX512F", "AVX512VNNI", "AMXBF16", "AMXINT8")

# NFD's cpu-model.vendor_id comes from klauspost/cpuid (``Intel``, ``AMD``...); the CPU-model
# hook and some tools report the raw CPUID string (``GenuineIntel``). Both map to one name.
CPU_VENDORS = {
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


def parse_cpu(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    b: Buckets,
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
        vendor = CPU_VENDORS.get(vendor_raw.strip().lower())
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
