"""Feature labels derived from a node's hidden hardware description, as the real collectors write them.

- `nfd_labels`: what a Node Feature Discovery (v0.18) worker publishes with the settings the service deploys:
  cpuid flags, cpu-model, multithreading, kernel and OS release, PCI vendors (`deviceLabelFields: [vendor]`,
  as the NVIDIA GPU operator configures NFD, hence `pci-10de.present`), NUMA, the CPU-model local hook
  (`feature.node.kubernetes.io/local-cpu.*`) the original deployment shipped, and the collectors chart's custom
  rule that names each Habana Labs (Gaudi) device id (`pci-1da3_<device>.present`).
- `gfd_labels`: NVIDIA GPU feature discovery labels (`nvidia.com/gpu.product`, `.memory` in MiB, `.count`,
  `.family`, CUDA driver/runtime versions, compute capability, MIG strategy and per-profile MIG labels for the
  "mixed" strategy).
- `amd_labels`: the ROCm node labeller's `amd.com/gpu.*` labels (device id, product name, VRAM, family,
  CU/SIMD counts, driver version).
"""

from __future__ import annotations

import re

from devcluster.sim.objects import container_env

NFD = "feature.node.kubernetes.io"
HABANA_PCI_VENDOR = "1da3"
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")

# Fallback device classes when a node has no `perf` entry (dense BF16 TFLOPS, memory bandwidth GB/s).
DEFAULT_CPU_PERF = {"tflops": 2.0, "bandwidth_gbs": 100.0}


def label_value(text: str) -> str:
    """Make free text a valid label value (<= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    text = text.replace("(R)", "").replace("(TM)", "").replace("(tm)", "")
    text = re.sub(r"\s+CPU\s+@\s+[\d.]+\s*GHz", "", text)
    value = _LABEL_VALUE_BAD.sub("_", text.strip())[:63]
    return value.strip("_.-")


def nfd_labels(hw: dict, node_info: dict | None = None) -> dict[str, str]:
    labels: dict[str, str] = {}
    cpu = hw.get("cpu") or {}
    for flag in cpu.get("flags") or ():
        labels[f"{NFD}/cpu-cpuid.{flag}"] = "true"
    if cpu:
        labels[f"{NFD}/cpu-model.vendor_id"] = str(cpu.get("vendor_id", ""))
        labels[f"{NFD}/cpu-model.family"] = str(cpu.get("family", ""))
        labels[f"{NFD}/cpu-model.id"] = str(cpu.get("model_id", ""))
        labels[f"{NFD}/cpu-hardware_multithreading"] = (
            "true" if int(cpu.get("threads_per_core", 1)) > 1 else "false"
        )
        if cpu.get("model_name"):
            labels[f"{NFD}/local-cpu.model"] = label_value(cpu["model_name"])
        for key in ("sockets", "cores_per_socket", "threads_per_core"):
            if key in cpu:
                labels[f"{NFD}/local-cpu.{key.replace('_', '-')}"] = str(cpu[key])
        if int(cpu.get("sockets", 1)) > 1:
            labels[f"{NFD}/memory-numa"] = "true"
    kernel = (node_info or {}).get("kernelVersion") or hw.get("kernel")
    if kernel:
        labels[f"{NFD}/kernel-version.full"] = label_value(kernel)
        m = re.match(r"(\d+)\.(\d+)\.(\d+)", kernel)
        if m:
            labels[f"{NFD}/kernel-version.major"] = m.group(1)
            labels[f"{NFD}/kernel-version.minor"] = m.group(2)
            labels[f"{NFD}/kernel-version.revision"] = m.group(3)
    os_rel = hw.get("os") or {}
    if os_rel.get("id"):
        labels[f"{NFD}/system-os_release.ID"] = str(os_rel["id"])
    if os_rel.get("version_id"):
        vid = str(os_rel["version_id"])
        labels[f"{NFD}/system-os_release.VERSION_ID"] = vid
        major, _, minor = vid.partition(".")
        labels[f"{NFD}/system-os_release.VERSION_ID.major"] = major
        if minor:
            labels[f"{NFD}/system-os_release.VERSION_ID.minor"] = minor
    for vendor in hw.get("pci_vendors") or ():
        labels[f"{NFD}/pci-{vendor}.present"] = "true"
    # The chart's custom rule (charts/node_info_collector/files/gaudi-device-rule.yaml): one label per device id
    # of vendor 1da3, named as NFD names devices under `deviceLabelFields: [vendor, device]`.
    gpu = hw.get("gpu") or {}
    if (
        HABANA_PCI_VENDOR in (hw.get("pci_vendors") or ())
        and gpu.get("vendor") == "habana"
        and gpu.get("device_id")
    ):
        labels[f"{NFD}/pci-{HABANA_PCI_VENDOR}_{str(gpu['device_id']).lower()}.present"] = "true"
    labels[f"{NFD}/storage-nonrotationaldisk"] = "true"
    labels.update({k: str(v) for k, v in (hw.get("nfd_extra") or {}).items()})
    return labels


def gfd_labels(hw: dict, mig_strategy: str | None = None) -> dict[str, str]:
    """GFD labels for an NVIDIA node; empty for other nodes (GFD finds no NVML devices there)."""
    gpu = hw.get("gpu") or {}
    if gpu.get("vendor") != "nvidia":
        return {}
    mig = gpu.get("mig") or {}
    strategy = mig_strategy or mig.get("strategy") or "none"
    driver = [str(x) for x in gpu.get("driver") or (550, 127, "05")]
    runtime = [str(x) for x in gpu.get("cuda_runtime") or (12, 4)]
    compute = [str(x) for x in gpu.get("compute") or (8, 0)]
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": str(gpu.get("product", "")),
        "nvidia.com/gpu.memory": str(gpu.get("memory_mib", 0)),
        "nvidia.com/gpu.count": str(gpu.get("count", 0)),
        "nvidia.com/gpu.family": str(gpu.get("family", "")),
        "nvidia.com/gpu.machine": label_value(str(gpu.get("machine", ""))),
        "nvidia.com/gpu.compute.major": compute[0],
        "nvidia.com/gpu.compute.minor": compute[1],
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.mode": "compute",
        "nvidia.com/cuda.driver.major": driver[0],
        "nvidia.com/cuda.driver.minor": driver[1],
        "nvidia.com/cuda.driver.rev": driver[2] if len(driver) > 2 else "",
        "nvidia.com/cuda.driver-version.full": ".".join(driver),
        "nvidia.com/cuda.driver-version.major": driver[0],
        "nvidia.com/cuda.driver-version.minor": driver[1],
        "nvidia.com/cuda.driver-version.revision": driver[2] if len(driver) > 2 else "",
        "nvidia.com/cuda.runtime.major": runtime[0],
        "nvidia.com/cuda.runtime.minor": runtime[1],
        "nvidia.com/cuda.runtime-version.full": ".".join(runtime),
        "nvidia.com/cuda.runtime-version.major": runtime[0],
        "nvidia.com/cuda.runtime-version.minor": runtime[1],
        "nvidia.com/mig.capable": "true" if gpu.get("mig_capable") else "false",
        "nvidia.com/mig.strategy": strategy,
    }
    if strategy == "mixed":
        for profile, d in (mig.get("devices") or {}).items():
            p = f"nvidia.com/mig-{profile}"
            labels[f"{p}.count"] = str(d.get("count", 0))
            labels[f"{p}.memory"] = str(d.get("memory", 0))
            labels[f"{p}.multiprocessors"] = str(d.get("multiprocessors", 0))
            labels[f"{p}.slices.gi"] = str(d.get("slices_gi", 0))
            labels[f"{p}.slices.ci"] = str(d.get("slices_ci", 0))
            for engine, n in (d.get("engines") or {}).items():
                labels[f"{p}.engines.{engine}"] = str(n)
    return labels


def amd_labels(hw: dict) -> dict[str, str]:
    gpu = hw.get("gpu") or {}
    if gpu.get("vendor") != "amd":
        return {}
    dev = str(gpu.get("device_id", ""))
    count = str(gpu.get("count", 0))
    return {
        "amd.com/gpu.device-id": dev,
        "amd.com/gpu.product-name": str(gpu.get("product", "")),
        "amd.com/gpu.vram": str(gpu.get("vram", "")),
        "amd.com/gpu.family": str(gpu.get("family", "")),
        "amd.com/gpu.cu-count": str(gpu.get("cu_count", "")),
        "amd.com/gpu.simd-count": str(gpu.get("simd_count", "")),
        "amd.com/gpu.driver-version": str(gpu.get("driver_version", "")),
        f"beta.amd.com/gpu.device-id.{dev}": count,
        f"beta.amd.com/gpu.family.{gpu.get('family', '')}": count,
    }


def device_perf(hw: dict | None, accelerated: bool) -> dict:
    """Per-device throughput class used by the inference latency formula."""
    hw = hw or {}
    if accelerated and (hw.get("gpu") or {}).get("perf"):
        return dict(hw["gpu"]["perf"])
    return dict(hw.get("perf") or DEFAULT_CPU_PERF)


# Collectors the simulator recognises, by image repository and command: GFD shares its image with NVIDIA's
# device plugin, and the AMD labeller (`k8s-node-labeller`) ships in ROCm's k8s-device-plugin repository under a
# `labeller-<version>` tag, so the repository alone does not say which program runs.
def collector_kind(container: dict) -> str | None:
    image = container.get("image") or ""
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image.split("@")[0]
    words = " ".join([*(container.get("command") or []), *(container.get("args") or [])])
    if repo.endswith("nfd/node-feature-discovery") or repo.endswith("/node-feature-discovery"):
        # nfd-master/gc pods publish nothing themselves; the worker reads the host.
        return None if ("nfd-master" in words or "nfd-gc" in words) else "nfd"
    if "k8s-node-labeller" in words or ("rocm" in repo and "labeller" in image):
        return "amd-labeller"
    if "gpu-feature-discovery" in repo or (
        repo.endswith("k8s-device-plugin") and "gpu-feature-discovery" in words
    ):
        return "gfd" if "rocm" not in repo else None
    return None


def collector_labels(pod: dict, hw: dict, node: dict | None) -> dict[str, str]:
    """The labels the collector containers of `pod` publish for its node (empty for other pods).

    Shared by the emulator's kubelet and the real control plane's agent, so both label a node alike."""
    labels: dict[str, str] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        kind = collector_kind(c)
        if kind == "nfd":
            labels.update(nfd_labels(hw, ((node or {}).get("status") or {}).get("nodeInfo")))
        elif kind == "gfd":
            env = container_env(c)
            strategy = env.get("MIG_STRATEGY") or env.get("GFD_MIG_STRATEGY")
            args = " ".join(c.get("args") or [])
            if "--mig-strategy" in args:
                strategy = args.split("--mig-strategy", 1)[1].strip(" =").split()[0]
            labels.update(gfd_labels(hw, strategy if strategy in ("mixed", "single") else None))
        elif kind == "amd-labeller":
            labels.update(amd_labels(hw))
    return labels
