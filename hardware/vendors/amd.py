"""AMD Instinct GPUs, read from the AMD node labeller and the ROCm device plugin's capacity (``amd.com/gpu``).

The labeller publishes ``amd.com/gpu.<prop>=<value>`` (``device-id``, ``product-name``, ``vram``,
``driver-version``) and, in its older form, ``beta.amd.com/gpu.<prop>.<value>=<number of GPUs with that value>``.
When no product name is labelled the model comes from the PCI device id (the labeller's own ``amdgpu.ids``
table); when no VRAM is labelled, from ``hardware.gpus`` with a note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import gpus
from .labels import PCI_AMD, Buckets, device_counts, label_int

if TYPE_CHECKING:
    from ..inventory import NodeInventory

AMD_GPU = "amd.com/gpu"

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

# The labeller writes VRAM as whole GiB rounded to nearest ("191G").
_VRAM_RE = re.compile(r"(\d+)G")


def parse_amd(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    b: Buckets,
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
    device_ids.update(pci.get(PCI_AMD, set()))
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
        beta_count = label_int(beta_values["device-id"][device_id], "beta.amd.com/gpu.device-id.*", notes)
    device_counts(inv, AMD_GPU, capacity, allocatable, beta_count, "beta.amd.com/gpu.device-id label", notes)

    vram = amd.get("vram") or beta.get("vram") or next(iter(beta_values.get("vram", {})), None)
    memory = None
    if vram:
        match = _VRAM_RE.fullmatch(vram)
        if match:
            memory = int(match.group(1)) * 1024
        else:
            notes.append(f"amd.com/gpu.vram {vram!r} not understood; ignored")
    if memory is None and model:
        known = gpus.find(model)
        if known is not None and known.accelerator_type == "rocm":
            memory = known.memory_mib
            notes.append(f"GPU memory not labelled; {memory} MiB is the nominal size of {known.model}")
    if memory is None:
        notes.append("AMD GPU memory unknown")
    inv.accelerator_memory_mib = memory
    inv.driver_version = amd.get("driver-version") or beta.get("driver-version") or None
