"""What the pods bound to a node hold, and what is left: the accounting behind "free GPUs".

A pod holds resources once it is bound (``spec.nodeName``) until it terminates: Pending-but-bound and Running
pods count, Succeeded and Failed pods do not. A pod's effective requests follow the scheduler's rules (init
containers, restartable sidecars, pod overhead; a missing request defaults to the limit, which is how GPUs are
usually asked for). Free is allocatable minus what pods hold, never below zero. Pure functions on API dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from core.quantity import parse_quantity

from .inventory import NodeInventory
from .vendors.nvidia import mig_resource

__all__ = ["free_devices", "requested_by_pods"]

_TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})


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
            used = requested["resources"].get(mig_resource(profile, inventory.accelerator_model), 0)
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
