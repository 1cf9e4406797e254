"""The accelerator models BudCluster knows by name, with the memory of one device: the one table of its kind.

The inventory (``hardware.vendors``) and placement (``deployments.placement``) both need "how much memory does
one device of this model have" when a node does not say. This table answers both, with one rule.

The rule
--------
``memory_mib`` is the vendor's **published** memory of one schedulable device (the datasheet's figure), in MiB.
Vendors state device memory in binary units (the memory is built from power-of-two DRAM dies), so "16 GB" is
16 * 1024 = 16,384 MiB; the few figures that are not powers of two follow the same convention (H200 141 GB =
144,384 MiB, H100 NVL 94 GB = 96,256 MiB).

A node's own report always wins over this table. NVIDIA GPU feature discovery labels ``nvidia.com/gpu.memory``
with what the driver reports: NVML's total framebuffer memory divided by 2^20 (``GetTotalMemoryMB`` in
NVIDIA/k8s-device-plugin ``internal/resource/nvml-device.go``). That is less than the datasheet by what the
driver reserves and, on GDDR boards with ECC on, the ECC share, and it moves with the driver and the ECC
setting: T4 15,109 or 15,360 (of 16,384), L4 23,034 and A10G 23,028 (of 24,576), L40S 46,068 (of 49,152), H100
81,559 (of 81,920), H200 143,771 (of 144,384). Because that number is not published and not stable, it is not
what the table holds: the table holds the published figure, and the inventory uses it only when the label is
missing, with a note saying the figure is nominal. With vLLM's default ``gpu_memory_utilization`` of 0.9 the
usable share of a datasheet figure stays below what the driver reports for every part quoted above (the worst
ratio is the T4's 15,109 / 16,384 = 0.92).

"One device" is what one unit of the device plugin's resource gives a pod: an AMD MI250/MI250X carries two
graphics compute dies (GCDs) that the ROCm driver and the ``amd.com/gpu`` plugin expose as two GPUs with 64 GB
each, so the table says 64 GB, not the board's 128 GB. A MIG slice (``…-MIG-1g.5gb``, GFD's product name under
the *single* strategy) is one device with the memory its profile names (5 GB).

Sources (the ``published`` column quotes them)
----------------------------------------------
* NVIDIA datasheets and product pages: T4, L4, A2, A10, A30, A40, A100 (40 GB HBM2 / 80 GB HBM2e), H100 (SXM and
  PCIe 80 GB, NVL 94 GB), H200 (141 GB HBM3e), L40, L40S, RTX A6000, RTX 6000 Ada, V100, P100, P4, K80
  (24 GB per board, two GPUs). A10G: AWS EC2 G5 instance page (24 GB per GPU).
* AMD Instinct product pages and the CDNA 2 white paper (MI250/MI250X: two GCDs of 64 GB HBM2e each).
* Intel Gaudi product briefs: Gaudi 32 GB HBM2, Gaudi2 96 GB HBM2E, Gaudi3 128 GB HBM2e.

Matching a product name
-----------------------
Product names come in many spellings (GFD's ``NVIDIA-A100-SXM4-40GB``, GKE's ``nvidia-tesla-t4``, the AMD
labeller's ``AMD_Instinct_MI300X_OAM``, ``HL-225 Gaudi2``). A name is split into lower-case words at anything
but letters, digits and dots; an entry matches when all the words of one of its ``names`` are among them, and
the entry with the most matching words wins (``H100 NVL`` over ``H100``). Whole words, so ``A10`` never matches
``A100`` nor ``L4`` ``L40``. A size written in the name (``A100-SXM4-80GB``, ``nvidia-h100-80gb``) is the
board's memory and wins over the family's entry, whose figure is then the size the family is sold with when the
name carries none (an unsized A100 is the 40 GB part, as on GKE ``nvidia-tesla-a100`` and EC2 P4d).

This module is pure data and string handling: no Django, so the parser benchmarks import it directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GPU", "GPUS", "find", "memory_mib", "mig_profile", "mig_profile_memory_mib", "words"]

GIB_IN_MIB = 1024


@dataclass(frozen=True, slots=True)
class GPU:
    """One accelerator model: what it is called, who makes it, and the memory of one device."""

    model: str  # the canonical short name used in notes ("T4", "MI300X", "Gaudi2")
    vendor: str  # NVIDIA | AMD | Intel
    accelerator_type: str  # cuda | rocm | hpu (hardware.choices.AcceleratorType)
    memory_mib: int  # published memory of one schedulable device
    published: str  # the datasheet's words for it
    names: tuple[tuple[str, ...], ...]  # the word sets that identify the model in a product name


def _gpu(model: str, vendor: str, kind: str, gb: int, published: str, *names: str) -> GPU:
    return GPU(model, vendor, kind, gb * GIB_IN_MIB, published, tuple(tuple(n.split()) for n in names))


GPUS: tuple[GPU, ...] = (
    # NVIDIA data-centre GPUs.
    _gpu("T4", "NVIDIA", "cuda", 16, "16 GB GDDR6", "t4"),
    _gpu("L4", "NVIDIA", "cuda", 24, "24 GB GDDR6", "l4"),
    _gpu("A2", "NVIDIA", "cuda", 16, "16 GB GDDR6", "a2"),
    _gpu("A10", "NVIDIA", "cuda", 24, "24 GB GDDR6", "a10"),
    _gpu("A10G", "NVIDIA", "cuda", 24, "24 GB GDDR6 (AWS G5)", "a10g"),
    _gpu("A30", "NVIDIA", "cuda", 24, "24 GB HBM2", "a30"),
    _gpu("A40", "NVIDIA", "cuda", 48, "48 GB GDDR6 with ECC", "a40"),
    _gpu("A100", "NVIDIA", "cuda", 40, "40 GB HBM2 (80 GB HBM2e parts name their size)", "a100"),
    _gpu("H100", "NVIDIA", "cuda", 80, "80 GB HBM3 (SXM) / HBM2e (PCIe)", "h100"),
    _gpu("H100 NVL", "NVIDIA", "cuda", 94, "94 GB HBM3", "h100 nvl"),
    _gpu("H800", "NVIDIA", "cuda", 80, "80 GB HBM3 (SXM) / HBM2e (PCIe)", "h800"),
    _gpu("H200", "NVIDIA", "cuda", 141, "141 GB HBM3e", "h200"),
    _gpu("L40", "NVIDIA", "cuda", 48, "48 GB GDDR6 with ECC", "l40"),
    _gpu("L40S", "NVIDIA", "cuda", 48, "48 GB GDDR6 with ECC", "l40s"),
    _gpu("RTX A6000", "NVIDIA", "cuda", 48, "48 GB GDDR6", "rtx a6000", "a6000"),
    _gpu("RTX 6000 Ada", "NVIDIA", "cuda", 48, "48 GB GDDR6", "rtx 6000 ada"),
    _gpu("V100", "NVIDIA", "cuda", 16, "16 GB HBM2 (32 GB parts name their size)", "v100"),
    _gpu("P100", "NVIDIA", "cuda", 16, "16 GB HBM2", "p100"),
    _gpu("P4", "NVIDIA", "cuda", 8, "8 GB GDDR5", "p4"),
    _gpu("K80", "NVIDIA", "cuda", 12, "24 GB GDDR5 per board of two GPUs", "k80"),
    # AMD Instinct.
    _gpu("MI50", "AMD", "rocm", 32, "32 GB HBM2", "mi50"),
    _gpu("MI60", "AMD", "rocm", 32, "32 GB HBM2", "mi60"),
    _gpu("MI100", "AMD", "rocm", 32, "32 GB HBM2", "mi100"),
    _gpu("MI210", "AMD", "rocm", 64, "64 GB HBM2e", "mi210"),
    _gpu("MI250", "AMD", "rocm", 64, "128 GB HBM2e on two GCDs (two devices)", "mi250"),
    _gpu("MI250X", "AMD", "rocm", 64, "128 GB HBM2e on two GCDs (two devices)", "mi250x"),
    _gpu("MI300A", "AMD", "rocm", 128, "128 GB HBM3 (shared with the CPU)", "mi300a"),
    _gpu("MI300X", "AMD", "rocm", 192, "192 GB HBM3", "mi300x"),
    _gpu("MI308X", "AMD", "rocm", 192, "192 GB HBM3", "mi308x"),
    _gpu("MI325X", "AMD", "rocm", 256, "256 GB HBM3E", "mi325x"),
    _gpu("MI350X", "AMD", "rocm", 288, "288 GB HBM3E", "mi350x"),
    _gpu("MI355X", "AMD", "rocm", 288, "288 GB HBM3E", "mi355x"),
    # Intel Gaudi (HL-205, HL-225 and HL-325L/HL-338 are the cards' part numbers).
    _gpu("Gaudi", "Intel", "hpu", 32, "32 GB HBM2", "gaudi", "hl 205"),
    _gpu("Gaudi2", "Intel", "hpu", 96, "96 GB HBM2E", "gaudi2", "gaudi 2", "hl 225"),
    _gpu("Gaudi3", "Intel", "hpu", 128, "128 GB HBM2e", "gaudi3", "gaudi 3", "hl 325", "hl 325l", "hl 338"),
)

_WORD_SPLIT_RE = re.compile(r"[^a-z0-9.]+")
_SIZE_RE = re.compile(r"(\d+)gb")
# NVML's MIG profile names (``1g.5gb``, ``1g.10gb+me`` which GFD writes ``1g.10gb.me``, ``1c.3g.40gb``).
_MIG_PROFILE_RE = re.compile(r"(?:\d+c\.)?\d+g\.(\d+)gb(?:\.[a-z]+)*")

# Word -> entries with a name containing it, so a lookup only tries the entries a name can match.
_BY_WORD: dict[str, list[tuple[GPU, frozenset[str]]]] = {}
for _entry in GPUS:
    for _name in _entry.names:
        _BY_WORD.setdefault(_name[0], []).append((_entry, frozenset(_name)))


def words(product: str) -> list[str]:
    """A product name as lower-case words (split at anything but letters, digits and dots)."""
    return [w for w in _WORD_SPLIT_RE.split(product.lower()) if w]


def find(product: str) -> GPU | None:
    """The table's model for a product name, or None when the name names none of them."""
    ordered = words(product)
    present = set(ordered)
    best: GPU | None = None
    best_len = 0
    for word in ordered:  # in the name's order, so a tie goes to the model named first
        for entry, name in _BY_WORD.get(word, ()):
            if len(name) > best_len and name <= present:
                best, best_len = entry, len(name)
    return best


def mig_profile(product: str) -> str | None:
    """The MIG profile a product name ends in, as GFD names a GPU under the MIG *single* strategy
    (``NVIDIA-A100-SXM4-40GB-MIG-1g.5gb``); None for a whole GPU or an invalid MIG setup (``…-MIG-INVALID``)."""
    parts = words(product)
    for index, word in enumerate(parts[:-1]):
        if word == "mig" and _MIG_PROFILE_RE.fullmatch(parts[index + 1]):
            return parts[index + 1]
    return None


def mig_profile_memory_mib(profile: str) -> int | None:
    """The memory a MIG profile's name states (``3g.40gb`` → 40 GB), in MiB; None for a name that is no profile."""
    match = _MIG_PROFILE_RE.fullmatch(profile.lower())
    return int(match.group(1)) * GIB_IN_MIB if match else None


def memory_mib(product: str) -> int | None:
    """Published memory of one device of a product, in MiB; None when the name says nothing the table knows.

    In order: a MIG slice's profile (single-strategy product names), a size in the name (the board's memory),
    the table's figure for the model.
    """
    profile = mig_profile(product)
    if profile is not None:
        return mig_profile_memory_mib(profile)
    for word in words(product):
        match = _SIZE_RE.fullmatch(word)
        if match:
            return int(match.group(1)) * GIB_IN_MIB
    entry = find(product)
    return entry.memory_mib if entry else None
