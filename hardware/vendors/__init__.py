"""What each node labeller publishes, read into a ``NodeInventory``: one module per source of facts.

* ``labels``: the one pass that sorts a node's labels by owner, and the helpers every parser shares (whole
  counts, integer labels, device counts with their fallbacks, NFD's PCI labels).
* ``cpu``: Node Feature Discovery's CPU labels and the collector chart's CPU-model hook.
* ``nvidia``: NVIDIA GPU feature discovery (model, memory, count, MIG, driver and CUDA versions).
* ``amd``: the AMD node labeller (and its ``beta.amd.com`` form) plus the PCI-id table.
* ``gaudi``: Intel Gaudi, known from NFD's PCI labels and the Habana device plugin.

``hardware.inventory.parse_node`` reads the node's status, sorts the labels and hands each parser its bucket;
the parsers fill the inventory in place and never raise on content (a missing or odd value becomes ``None``
and a note). Model memory figures come from the one table, ``hardware.gpus``.
"""
