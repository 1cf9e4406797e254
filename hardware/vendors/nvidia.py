"""NVIDIA GPUs, read from GPU feature discovery (GFD) labels and the device plugin's capacity.

GFD labels (``nvidia.com/``): ``gpu.product`` (model), ``gpu.memory`` (MiB, what the driver reports; see
``hardware.gpus`` for how that differs from the datasheet), ``gpu.count``, ``gpu.replicas`` /
``gpu.sharing-strategy`` (time-slicing, MPS), ``mig.strategy``, ``mig-<profile>.count`` and
``cuda.driver*`` / ``cuda.runtime*`` versions (old and new spellings). Without GFD (GKE, bare EKS) the model
comes from a cloud label, with a note.

Counts are whole devices from capacity (``nvidia.com/gpu``). MIG comes in two strategies:

* *mixed*: slices are separate resources (``nvidia.com/mig-1g.10gb``) and ``nvidia.com/gpu`` counts only the
  GPUs not in MIG mode; the slices are reported in ``mig`` as ``{profile: count}``.
* *single*: every GPU is cut into slices of one profile and the device plugin advertises the slices *as*
  ``nvidia.com/gpu``; GFD names the product after the slice (``NVIDIA-A100-SXM4-40GB-MIG-1g.5gb``), labels the
  slice's memory and counts slices in ``gpu.count`` (NVIDIA/k8s-device-plugin ``internal/lm/mig-strategy.go``).
  The count stays what ``nvidia.com/gpu`` advertises (slices, with a note) and ``mig`` names the profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.quantity import to_count

from .. import gpus
from .labels import Buckets, device_counts, label_int

if TYPE_CHECKING:
    from ..inventory import NodeInventory

NVIDIA_GPU = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"


def mig_resource(profile: str, accelerator_model: str | None) -> str:
    """The resource a pod requests one ``profile`` slice with: ``nvidia.com/mig-<profile>`` under the mixed
    strategy, ``nvidia.com/gpu`` under the single strategy (where the product is named after the slice)."""
    if accelerator_model and gpus.mig_profile(accelerator_model) == profile:
        return NVIDIA_GPU
    return f"{MIG_PREFIX}{profile}"


def parse_nvidia(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    labels: Mapping[str, str],
    b: Buckets,
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
    single_profile = gpus.mig_profile(model) if model else None

    label_count = label_int(nv.get("gpu.count"), "nvidia.com/gpu.count", notes)
    if NVIDIA_GPU not in capacity and mig_capacity:
        # MIG mixed strategy with every GPU partitioned: the device plugin advertises only slices.
        inv.accelerator_resource = NVIDIA_GPU
        inv.accelerator_count = 0
        inv.allocatable["accelerators"] = 0
        notes.append("every GPU is in MIG mode: no whole GPUs advertised, only MIG slices")
    else:
        device_counts(inv, NVIDIA_GPU, capacity, allocatable, label_count, "nvidia.com/gpu.count", notes)

    # Time-slicing / MPS advertise each GPU several times; report whole devices.
    replicas = label_int(nv.get("gpu.replicas"), "nvidia.com/gpu.replicas", notes)
    if replicas and replicas > 1 and NVIDIA_GPU in capacity and inv.accelerator_count is not None:
        inv.accelerator_count //= replicas
        notes.append(
            f"GPU sharing ({nv.get('gpu.sharing-strategy', 'replicas')}) advertises each GPU "
            f"{replicas} times; "
            f"{inv.accelerator_count} whole GPUs"
        )

    memory = label_int(nv.get("gpu.memory"), "nvidia.com/gpu.memory", notes)
    if memory is None and model:
        memory = gpus.memory_mib(model)
        if memory is not None:
            notes.append(f"GPU memory not labelled; {memory} MiB is the nominal size of {model}")
        else:
            notes.append(f"GPU memory not labelled and {model!r} is not in the built-in table")
    elif memory is None:
        notes.append("GPU memory unknown (no nvidia.com/gpu.memory label)")
    inv.accelerator_memory_mib = memory

    # The product name says single strategy even when the mig.strategy label is missing.
    inv.mig_strategy = nv.get("mig.strategy") or ("single" if single_profile else None)
    mig: dict[str, int] = {}
    for profile, raw in mig_capacity.items():
        try:
            slices = to_count(raw)
        except ValueError:
            notes.append(f"status.capacity.{MIG_PREFIX}{profile} {raw!r} is not a whole count; ignored")
            continue
        if slices:
            mig[profile] = slices
    label_mig: dict[str, int] = {}
    for key, value in nv.items():
        if key.startswith("mig-") and key.endswith(".count"):
            slices = label_int(value, f"nvidia.com/{key}", notes)
            if slices:
                label_mig[key[len("mig-") : -len(".count")]] = slices
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
    if single_profile is not None and not mig:
        # Single strategy: the GPUs advertised are the slices, all of this one profile.
        slices = inv.accelerator_count if inv.accelerator_count else label_count
        if slices:
            mig = {single_profile: slices}
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
