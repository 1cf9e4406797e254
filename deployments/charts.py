"""Chart values of a deployment: the runtime chart (``charts/bud_runtime_container``), the weights transfer chart
(``charts/model_transfer``), the names they use, and the vLLM server's command line.

* `runtime_values` turns a placement into the flat runtime values a deployment keeps (``placement["runtime"]``):
  device, tensor parallelism, resources, node selector, context and concurrency.
* `vllm_args` is the one place the vLLM flags are built from those values. The chart renders ``engine.args``
  as given and then ``engine.extraArgs``, the user's own flags, so a revision's values keep the user's flags on
  their own: `revision_settings` reads replicas, engine args and image back from a stored revision (rollback)
  without having to know how many flags were generated.
* `runtime_chart_values` / `transfer_chart_values` are the charts' values from the runtime values and the request;
  `deployment_runtime_values` / `deployment_transfer_values` the same for a stored deployment (what the deploy,
  update and rollback runs install).

Pure functions of their arguments, apart from the service-type default read from settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from .catalog import GENERATION
from .choices import ModelSource
from .placement import (
    ACCELERATOR_RESOURCE,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    Candidate,
    PlacementResult,
)

if TYPE_CHECKING:
    from clusters.models import Cluster

    from .models import Deployment

RUNTIME_CHART = "bud_runtime_container"
TRANSFER_CHART = "model_transfer"
TRANSFER_RELEASE = "model"
TRANSFER_JOB = "model-transfer"
PVC_NAME = "model-weights"
HF_SECRET = "hf-token"  # noqa: S105 - a Secret object name, not a credential
S3_SECRET = "s3-credentials"  # noqa: S105 - a Secret object name
DEPLOYMENT_LABEL = (
    "budcluster.io/deployment-id"  # on the namespace, the Secrets and (through the chart) the pods
)
SERVING_PORT = 8000
MODEL_MOUNT_PATH = "/data/models-registry"  # where the runtime pods mount the weights volume
SHM_SIZE = "2Gi"  # /dev/shm of a runtime pod (NCCL and tensor-parallel workers)


# --- names -------------------------------------------------------------------------------------------------------


def sanitise(name: str, limit: int) -> str:
    """A DNS-1123 label fragment: lower case, [a-z0-9-], no leading/trailing dash, at most ``limit``."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    text = re.sub(r"-{2,}", "-", text)[:limit].strip("-")
    return text or "model"


def runtime_release_name(deployment: Deployment) -> str:
    """The runtime release, and so its Deployment and Service: the deployment's name, sanitised."""
    return sanitise(deployment.name, 40)


def ingress_host(cluster: Cluster, namespace: str) -> str:
    """``<namespace>.<ingress host>`` when the cluster has an ingress URL (the original's endpoint naming)."""
    if not cluster.ingress_url:
        return ""
    host = urlsplit(cluster.ingress_url).hostname or ""
    return f"{namespace}.{host}" if host else ""


# --- runtime values from a placement -----------------------------------------------------------------------------


def _quantity_gi(num_bytes: int) -> str:
    return f"{max(1, math.ceil(num_bytes / GIB))}Gi"


def runtime_values(
    result: PlacementResult,
    candidate: Candidate | None = None,
    *,
    served_model_name: str | None = None,
) -> dict:
    """Flat runtime values from a placement (its best candidate unless one is given); `vllm_args` and
    `runtime_chart_values` read them.

    Keys:
      model, served_model_name, model_kind   HF id, name clients use, "generation" or "embedding"
      device_type                            cuda | rocm | hpu | cpu
      tensor_parallel_size, replicas
      accelerator_resource, accelerator_count  e.g. "nvidia.com/gpu", TP ("" and 0 on CPU)
      node_selector                          product label (nvidia.com/gpu.product) when all replicas share a
                                             product, else kubernetes.io/hostname for a single node, else {}
      node_names                             nodes the plan chose (for a node-affinity term)
      cpu_request, cpu_limit                 cores as a Kubernetes quantity ("6")
      memory_request, memory_limit           model memory + buffer ("17Gi")
      shm_size                               /dev/shm size
      max_model_len, max_num_seqs            context planned for, concurrency
      gpu_memory_utilization                 accelerators only (0 on CPU)
      dtype, quantization                    quantization "" when none
      cpu_kvcache_space_gib                  VLLM_CPU_KVCACHE_SPACE for the CPU backend (0 elsewhere)
    """
    chosen = candidate or result.best
    model = result.model
    cpu = chosen.device_type == "cpu"
    cores = max(1, math.ceil(chosen.cpu_millicores / 1000))
    memory = _quantity_gi(chosen.host_memory_bytes)
    return {
        "model": model.hf_id,
        "served_model_name": served_model_name or model.name,
        "model_kind": model.kind,
        "device_type": chosen.device_type,
        "tensor_parallel_size": chosen.tensor_parallel_size,
        "replicas": chosen.replicas,
        "accelerator_resource": "" if cpu else ACCELERATOR_RESOURCE[chosen.device_type],
        "accelerator_count": chosen.devices_per_replica,
        "node_selector": dict(chosen.node_selector),
        "node_names": chosen.nodes,
        "cpu_request": str(cores),
        "cpu_limit": str(cores),
        "memory_request": memory,
        "memory_limit": memory,
        "shm_size": SHM_SIZE,
        "max_model_len": result.context_len,
        "max_num_seqs": result.concurrency,
        "gpu_memory_utilization": 0 if cpu else result.gpu_memory_utilization,
        "dtype": result.dtype,
        "quantization": result.quantization or "",
        "cpu_kvcache_space_gib": max(1, math.ceil(result.estimate.kv_cache_bytes / GIB)) if cpu else 0,
    }


# --- the vLLM command line -----------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """A number as the chart engine printed it when it built these flags itself (Go's shortest form: 0.9, 1)."""
    text = repr(float(value))
    return text.removesuffix(".0")


def gpu_memory_utilization(runtime: dict) -> float:
    """The share of each device vLLM may claim; the default where placement left none (CPU)."""
    return runtime.get("gpu_memory_utilization") or DEFAULT_GPU_MEMORY_UTILIZATION


def vllm_args(runtime: dict, *, with_storage: bool) -> list[str]:
    """The vLLM OpenAI server's flags for these runtime values, in a stable order; the user's own flags go after
    them (``engine.extraArgs``), so a user flag given twice wins (vLLM's parser keeps the last one).

    ``--model`` is the weights' directory in the mounted volume (``with_storage``) or the hub id vLLM downloads.
    ``--gpu-memory-utilization`` is passed on CPU too (the default there; the CPU backend ignores it and sizes
    its cache from ``VLLM_CPU_KVCACHE_SPACE``). fp8 quantizes a 16-bit checkpoint on load; AWQ/GPTQ/int8/int4
    checkpoints declare their method in config.json and vLLM detects it, so no flag for them.
    """
    model = runtime["model"]
    model_arg = f"{MODEL_MOUNT_PATH.removesuffix('/')}/{model.removeprefix('/')}" if with_storage else model
    args = [
        f"--model={model_arg}",
        f"--served-model-name={runtime['served_model_name']}",
        f"--tensor-parallel-size={int(runtime['tensor_parallel_size'])}",
        f"--max-model-len={int(runtime['max_model_len'])}",
        f"--gpu-memory-utilization={_number(gpu_memory_utilization(runtime))}",
        f"--max-num-seqs={int(runtime['max_num_seqs'])}",
        f"--port={SERVING_PORT}",
        f"--dtype={runtime['dtype']}",
    ]
    if runtime.get("quantization") == "fp8":
        args.append("--quantization=fp8")
    if runtime.get("model_kind") and runtime["model_kind"] != GENERATION:
        args.append("--task=embed")
    return args


# --- chart values ------------------------------------------------------------------------------------------------


def _image(image: str) -> dict:
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": image, "tag": "latest"}
    return {"repository": repository, "tag": tag}


def with_storage(config: dict) -> bool:
    """Whether the weights are copied into a volume first (every source but ``none``)."""
    return config.get("source", ModelSource.HF) != ModelSource.NONE


def runtime_chart_values(
    *,
    deployment_id: str,
    config: dict,
    runtime: dict,
    replicas: int,
    engine_args: Iterable[str],
    image: str,
    has_hf_secret: bool,
    ingress_host: str = "",
) -> dict:
    """Values of ``charts/bud_runtime_container`` from a placement's runtime values and the request;
    ``engine_args`` are the user's own flags (``engine.extraArgs``)."""
    device = runtime["device_type"]
    storage = with_storage(config)
    env = [{"name": k, "value": str(v)} for k, v in sorted((config.get("env") or {}).items())]
    if device == "cpu":
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(runtime["cpu_kvcache_space_gib"])})
    values: dict[str, Any] = {
        "deploymentId": deployment_id,
        "deviceType": device,
        "replicas": replicas,
        "model": {"servedName": runtime["served_model_name"], "path": runtime["model"]},
        "modelStorage": {
            "enabled": storage,
            "existingClaim": PVC_NAME if storage else "",
            "mountPath": MODEL_MOUNT_PATH,
        },
        "engine": {
            # The chart also reads these: the port for the container and Service, TP for the accelerator count.
            "port": SERVING_PORT,
            "tensorParallelSize": runtime["tensor_parallel_size"],
            "maxModelLen": runtime["max_model_len"],
            "gpuMemoryUtilization": gpu_memory_utilization(runtime),
            "maxNumSeqs": runtime["max_num_seqs"],
            "args": vllm_args(runtime, with_storage=storage),
            "extraArgs": [str(a) for a in engine_args],
        },
        "resources": {
            "requests": {"cpu": runtime["cpu_request"], "memory": runtime["memory_request"]},
            "limits": {"memory": runtime["memory_limit"]},
        },
        "nodeSelector": dict(runtime.get("node_selector") or {}),
        "shm": {"enabled": True, "sizeLimit": runtime["shm_size"]},
        "service": {
            "type": config.get("service_type") or settings.DEPLOY_SERVICE_TYPE,
            "port": SERVING_PORT,
        },
        "env": env,
    }
    if image:
        values["image"] = _image(image)
    if has_hf_secret:
        values["huggingface"] = {"existingSecret": HF_SECRET, "tokenKey": "token"}
    if ingress_host:
        values["ingress"] = {"enabled": True, "host": ingress_host, "path": "/", "pathType": "Prefix"}
    return values


def revision_settings(values: dict) -> dict:
    """What the user chose for a stored runtime revision: replicas, their own engine flags and the image
    ("" when the chart's per-device image was used). A rollback restores these on the deployment."""
    image = values.get("image") or {}
    return {
        "replicas": int(values["replicas"]),
        "engine_args": list((values.get("engine") or {}).get("extraArgs") or []),
        "image": f"{image['repository']}:{image['tag']}" if image.get("repository") else "",
    }


def transfer_chart_values(config: dict, runtime: dict, weights_bytes: int, *, has_secret: bool) -> dict:
    """Values of ``charts/model_transfer``: a PVC sized for the weights and the copy Job."""
    size_gi = max(1, math.ceil(weights_bytes * 1.2 / GIB) + 1)
    values: dict[str, Any] = {
        "source": config.get("source") or ModelSource.HF,
        "jobName": TRANSFER_JOB,
        "pvc": {"create": True, "name": PVC_NAME, "size": f"{size_gi}Gi"},
        "destinationPath": runtime["model"],
        "modelSizeBytes": int(weights_bytes),
    }
    if config.get("pvc_storage_class"):
        values["pvc"]["storageClassName"] = config["pvc_storage_class"]
    if values["source"] == ModelSource.S3:
        s3 = config.get("s3") or {}
        values["s3"] = {
            "endpoint": s3.get("endpoint", ""),
            "region": s3.get("region") or "us-east-1",
            "bucket": s3.get("bucket", ""),
            "prefix": s3.get("prefix", ""),
            "existingSecret": S3_SECRET,
        }
    else:
        values["huggingface"] = {"repoId": runtime["model"], "revision": config.get("revision") or "main"}
        if has_secret:
            values["huggingface"].update(existingSecret=HF_SECRET, tokenKey="token")
    return values


# --- a stored deployment's values ----------------------------------------------------------------------------------


def _secret_names(deployment: Deployment) -> set[str]:
    return set(deployment.config.get("secret_names") or [])


def weights_bytes(deployment: Deployment) -> int:
    """The weights' size the placement estimated (0 before placement)."""
    return int((deployment.placement.get("result") or {}).get("estimate", {}).get("weights_bytes", 0))


def deployment_runtime_values(
    deployment: Deployment, *, replicas: int, engine_args: Iterable[str], image: str
) -> dict:
    """The runtime chart's values for a stored deployment with these user settings. The ingress is added only
    when the Service is not a LoadBalancer (which has its own address)."""
    service_type = deployment.config.get("service_type") or settings.DEPLOY_SERVICE_TYPE
    return runtime_chart_values(
        deployment_id=str(deployment.pk),
        config=deployment.config,
        runtime=deployment.placement["runtime"],
        replicas=replicas,
        engine_args=engine_args,
        image=image,
        has_hf_secret=HF_SECRET in _secret_names(deployment),
        ingress_host=ingress_host(deployment.cluster, deployment.namespace)
        if service_type != "LoadBalancer"
        else "",
    )


def deployment_transfer_values(deployment: Deployment) -> dict:
    """The transfer chart's values for a stored deployment (placed, with its Secrets named in the config)."""
    return transfer_chart_values(
        deployment.config,
        deployment.placement["runtime"],
        weights_bytes(deployment),
        has_secret=bool({HF_SECRET, S3_SECRET} & _secret_names(deployment)),
    )
