"""Intel Gaudi accelerators (HPUs): the count from the Habana device plugin's capacity (``habana.ai/gaudi``), the
generation from the PCI device id in an NFD PCI label ``pci-1da3_<device>.present``. The collectors chart's custom
nfd-worker rule publishes that label for Habana devices alone (its NFD keeps ``deviceLabelFields: [vendor]`` for
everything else); an NFD configured with ``deviceLabelFields: [vendor, device]`` publishes the same name. No Habana
component labels the model, and none publishes HPU memory: it is the generation's figure from ``hardware.gpus``,
with a note."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import gpus
from .labels import PCI_HABANA, device_counts

if TYPE_CHECKING:
    from ..inventory import NodeInventory

HABANA_GAUDI = "habana.ai/gaudi"

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


def parse_gaudi(
    inv: NodeInventory,
    capacity: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    pci: Mapping[str, set[str]],
    notes: list[str],
) -> None:
    inv.accelerator_type = "hpu"
    inv.accelerator_vendor = "Intel"
    devices = sorted(pci.get(PCI_HABANA, set()))
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
            "Gaudi generation unknown: no NFD label with the PCI device id (pci-1da3_<device>.present, "
            "published by the collectors chart's nfd-worker rule)"
        )
    inv.accelerator_model = model
    device_counts(inv, HABANA_GAUDI, capacity, allocatable, None, "", notes)
    known = gpus.find(model) if model else None
    if known is not None:
        inv.accelerator_memory_mib = known.memory_mib
        notes.append(
            f"HPU memory not labelled; {inv.accelerator_memory_mib} MiB is the nominal size of {model}"
        )
    else:
        notes.append("HPU memory unknown")
