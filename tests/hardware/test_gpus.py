"""The one table of accelerator models: published memory per device, and the product spellings it recognises."""

from __future__ import annotations

import pytest

from hardware import gpus

GIB = 1024


@pytest.mark.parametrize(
    ("product", "mib"),
    [
        # The parts placement and the inventory disagreed on: the datasheet's figure, in binary units.
        ("Tesla-T4", 16 * GIB),
        ("nvidia-tesla-t4", 16 * GIB),
        ("NVIDIA-L4", 24 * GIB),
        ("NVIDIA-H200", 141 * GIB),
        # The most specific model wins; whole words only (A10 is not A100, L4 is not L40).
        ("NVIDIA-H100-NVL", 94 * GIB),
        ("NVIDIA H100 PCIe", 80 * GIB),
        ("NVIDIA-A10G", 24 * GIB),
        ("NVIDIA-L40S", 48 * GIB),
        ("NVIDIA RTX A6000", 48 * GIB),
        # A size in the name is the board's; an unsized A100 is the 40 GB part.
        ("NVIDIA-A100-SXM4-80GB", 80 * GIB),
        ("NVIDIA-H100-80GB-HBM3", 80 * GIB),
        ("nvidia-tesla-a100", 40 * GIB),
        # A MIG slice is a device of its profile's size.
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", 5 * GIB),
        ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me", 10 * GIB),
        # AMD: one device of an MI250/MI250X is one of its two dies.
        ("AMD_Instinct_MI300X_OAM", 192 * GIB),
        ("AMD Instinct MI250X / MI250", 64 * GIB),
        ("AMD-Instinct-MI325X", 256 * GIB),
        # Gaudi by generation or by card.
        ("Gaudi", 32 * GIB),
        ("Gaudi2", 96 * GIB),
        ("HL-225 Gaudi2", 96 * GIB),
        ("HL-325L", 128 * GIB),
        ("Gaudi 3", 128 * GIB),
    ],
)
def test_published_memory_per_device(product: str, mib: int) -> None:
    assert gpus.memory_mib(product) == mib


@pytest.mark.parametrize(
    ("product", "mib"),
    [
        ("NVIDIA-GeForce-RTX-4090", None),
        ("", None),
        # An invalid MIG setup names no slice: only the board's size is known.
        ("NVIDIA-A100-SXM4-40GB-MIG-INVALID", 40 * GIB),
    ],
)
def test_products_the_table_does_not_know(product: str, mib: int | None) -> None:
    assert gpus.memory_mib(product) == mib


def test_models_carry_vendor_and_type() -> None:
    assert (gpus.find("Tesla-T4").vendor, gpus.find("Tesla-T4").accelerator_type) == ("NVIDIA", "cuda")
    assert gpus.find("AMD Instinct MI300X VF").model == "MI300X"
    assert gpus.find("HL-338").model == "Gaudi3"
    assert gpus.find("NVIDIA-A100-PCIE-40GB").model == "A100"
    assert gpus.find("NVIDIA-A10").model == "A10"


def test_mig_profiles() -> None:
    assert gpus.mig_profile("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb") == "1g.5gb"
    assert gpus.mig_profile("NVIDIA-A100-SXM4-40GB-MIG-1c.3g.20gb-SHARED") == "1c.3g.20gb"
    assert gpus.mig_profile("NVIDIA-A100-SXM4-40GB") is None
    assert gpus.mig_profile("NVIDIA-A100-SXM4-40GB-MIG-INVALID") is None
    assert gpus.mig_profile_memory_mib("3g.40gb") == 40 * GIB
    assert gpus.mig_profile_memory_mib("gaudi") is None


def test_every_model_is_named_once() -> None:
    names = [name for entry in gpus.GPUS for name in entry.names]
    assert len(names) == len(set(names))
    assert all(entry.memory_mib > 0 and entry.published for entry in gpus.GPUS)
