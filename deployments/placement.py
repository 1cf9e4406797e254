"""Where a model can run: memory estimate, candidate placements and per-node refusals.

Pure and fast on purpose (no Django, no I/O): the plan preview, the deploy workflow and the benchmark all call
`plan_placement` with an inventory snapshot mapped to `NodeCapacity` rows.

Memory estimate (1 GiB = 2**30 bytes; every figure below is bytes unless it says otherwise)
------------------------------------------------------------------------------------------
weights    = params * bytes_per_param(dtype)                                         (unquantized)
           = (params - E) * bytes_per_param(quantization) + E * bytes_per_param(dtype)   (quantized)
               bytes_per_param: float32 4, bfloat16/float16 2, fp8/int8 1,
               int4/awq/gptq 0.52 (0.5 B per weight + ~4 % for the group-wise scales and zeros at group size
               128: one 16-bit scale and one 4-bit zero per 128 weights).
               E = embedding + LM head parameters (vocab_size * hidden_size, once when tied); quantized
               checkpoints keep them in 16 bits, e.g. Llama-3.1-8B AWQ is 5.7 GB, not 8.03 B * 0.5 = 4 GB.
kv_cache   = kv_per_token * context_len * concurrency
kv_per_token = 2 (K and V) * layers * kv_heads * head_dim * bytes_per_param(dtype)
               (Llama-3.1-8B in bfloat16: 2 * 32 * 8 * 128 * 2 = 131072 B = 128 KiB per token).
               Encoder-only embedding models keep no KV cache (0).
per_device = (weights + kv_cache) / TP * (1 + overhead_fraction) + overhead_fixed
               Runtime overhead per device, from vLLM's own profile of what lives outside weights and cache:
               cuda 1.5 GiB fixed (CUDA context ~0.5, CUDA graphs ~0.5, NCCL buffers and the activation peak
               of one prefill chunk) + 2 % (allocator fragmentation); rocm 2 GiB + 2 % (larger HIP context);
               hpu 2 GiB + 2 % (HPU graphs); cpu 2 GiB (Python, tokenizer, oneDNN scratch) + 5 % (weight
               pre-packing buffers). Weights and KV cache split evenly over the TP group because TP must
               divide both the attention heads and the KV heads.
usable     = device_memory * gpu_memory_utilization (default 0.9): vLLM claims that share of each device for
               weights, activations and KV cache together, so per_device must fit in it.
               CPU: the node's free memory (allocatable minus requests) must hold the replica's memory
               request = weights + kv_cache + overhead + buffer.
host memory of an accelerator replica (its container memory request) = weights + buffer: vLLM reads the
               safetensors through host memory before copying them to the devices.
buffer     = 1 GiB, 2 GiB when the model memory exceeds 10 GiB (as the original service did).

Placement
---------
Tensor parallelism stays inside one node (no pipeline parallelism), so TP is a power of two that divides
the attention heads and the KV heads (vLLM's requirement) and is at most the node's device count. Each replica
runs on one node; replicas go to distinct nodes first (one node failing must not take every replica down),
then share nodes with enough free devices. Nodes are tried best-fit first (fewest free devices that still
fit), which leaves whole nodes free for the models that need TP 8.

Candidates are sorted best first: accelerators before CPU, then fewest devices (TP * replicas), then the
most memory headroom; CPU candidates prefer AMX, then AVX-512, then AVX2-only, and CPUs without AVX2 are
refused (the vLLM CPU backend needs AVX2 at least).

Speed: identical nodes share one evaluation (nodes precompute a class key when built), so a decision is a
few comparisons per node, and refusal sentences are written only when read; 20,000 nodes plan in a few
milliseconds (see benchmarks/placement.py).

`plan_placement` is a few steps (`prepare_plan`, `classify_nodes`, `class_candidates`, ...) that
`deployments/placement_fleet.py` reuses to plan many clusters at once with one class cache.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, overload

from deployments.catalog import DTYPE_ALIASES, EMBEDDING, ModelSpec, resolve_model
from hardware import gpus

KIB = 1024
MIB = 1024**2
GIB = 1024**3

DEVICE_TYPES = ("cuda", "rocm", "hpu", "cpu")
TIMES = "\u00d7"  # multiplication sign in operator-facing messages ("24 GiB \u00d7 1 free")
ACCELERATOR_TYPES = ("cuda", "rocm", "hpu")

BYTES_PER_DTYPE: dict[str, float] = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
BYTES_PER_QUANTIZED_PARAM: dict[str, float] = {
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.52,
    "awq": 0.52,
    "gptq": 0.52,
}
# Quantization methods vLLM's CPU backend cannot run (no FP8 kernels there).
CPU_UNSUPPORTED_QUANTIZATION = frozenset({"fp8"})


@dataclass(frozen=True, slots=True)
class RuntimeOverhead:
    fixed_bytes: int  # per device (per node for CPU)
    fraction: float  # of the weights + KV cache held by that device


RUNTIME_OVERHEAD: dict[str, RuntimeOverhead] = {
    "cuda": RuntimeOverhead(int(1.5 * GIB), 0.02),
    "rocm": RuntimeOverhead(2 * GIB, 0.02),
    "hpu": RuntimeOverhead(2 * GIB, 0.02),
    "cpu": RuntimeOverhead(2 * GIB, 0.05),
}

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
MAX_TENSOR_PARALLEL = 64
MIN_CPU_CORES = 4  # below this a CPU replica answers too slowly to be worth deploying
CPU_RESERVED_CORES = 2  # left to the kubelet and system daemons on a CPU node (as the original service did)
ACCELERATOR_CPU_BASE_CORES = 4  # API server, engine core and tokenizer processes
ACCELERATOR_CPU_CORES_PER_DEVICE = 1  # one worker process per device
MAX_MODEL_LEN_MARGIN = 1.1

# Extended resource names of the device plugins, and the node label that names the device product.
ACCELERATOR_RESOURCE = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "hpu": "habana.ai/gaudi"}
PRODUCT_LABEL = {"cuda": "nvidia.com/gpu.product", "rocm": "amd.com/gpu.product-name"}
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Taints the runtime chart tolerates (the device plugins' own); any other NoSchedule/NoExecute taint blocks.
TOLERATED_TAINT_KEYS = frozenset(ACCELERATOR_RESOURCE.values())

ISA_RANK = {"amx": 0, "avx512": 1, "avx2": 2}
ISA_LABEL = {"amx": "AMX", "avx512": "AVX-512", "avx2": "AVX2"}


def known_device_memory_mib(accelerator_model: str) -> int:
    """Memory per device for a product name when the inventory lacks it (no feature-discovery label): the
    published figure from the one GPU table (``hardware.gpus``); 0 when the name is unknown."""
    return gpus.memory_mib(accelerator_model) or 0


def _normalise_flag(flag: str) -> str:
    return flag.upper().replace("_", "").replace("-", "")


def cpu_isa(cpu_flags: Iterable[str]) -> str:
    """Best vector ISA the vLLM CPU backend can use: "amx", "avx512", "avx2" or "" (unusable)."""
    flags = {_normalise_flag(f) for f in cpu_flags}
    if "AMXBF16" in flags:
        return "amx"
    if "AVX512F" in flags:
        return "avx512"
    if "AVX2" in flags:
        return "avx2"
    return ""


def _gib(num_bytes: float) -> str:
    """Human GiB: one decimal below 100 GiB, whole numbers above ("18.4", "151")."""
    value = num_bytes / GIB
    if value >= 100:
        return str(round(value))
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _device_word(device_type: str) -> str:
    return "HPU" if device_type == "hpu" else "GPU"


# --------------------------------------------------------------------------------------------- inventory


def _cpu_cores_request(node: NodeCapacity) -> int:
    """Cores a CPU replica requests on this node: physical cores - reserved, within what is free."""
    free = node.free_cpu_millicores // 1000
    if node.cpu_cores:
        return min(node.cpu_cores - CPU_RESERVED_CORES, free)
    return free - CPU_RESERVED_CORES


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """One node as placement sees it (the inventory maps its stored rows to this).

    `free_devices`, `free_cpu_millicores` and `free_memory_bytes` are what is left after the pods already
    requesting them; `cpu_cores` counts physical cores. `taints` are "key[=value]:Effect" strings; they
    explain why a node is unschedulable. A class key of everything that decides the evaluation is computed
    once here, so a placement over thousands of identical nodes evaluates each kind of node only once.
    """

    name: str
    ready: bool = True
    schedulable: bool = True
    accelerator_type: str = "cpu"
    accelerator_vendor: str = ""
    accelerator_model: str = ""
    device_count: int = 0
    free_devices: int = 0
    device_memory_mib: int = 0
    cpu_cores: int = 0
    free_cpu_millicores: int = 0
    memory_bytes: int = 0
    free_memory_bytes: int = 0
    cpu_flags: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    taints: tuple[str, ...] = ()
    # Derived in __post_init__:
    isa: str = field(init=False, default="", compare=False)
    cpu_request_cores: int = field(init=False, default=0, compare=False, repr=False)
    class_key: str = field(init=False, default="", compare=False, repr=False)
    blocked_reason: str = field(init=False, default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("node: name must be a non-empty string")
        if self.accelerator_type not in DEVICE_TYPES:
            raise ValueError(
                f"{self.name}: accelerator_type must be one of {', '.join(DEVICE_TYPES)}, "
                f"got {self.accelerator_type!r}"
            )
        for attr in (
            "device_count",
            "free_devices",
            "device_memory_mib",
            "cpu_cores",
            "free_cpu_millicores",
            "memory_bytes",
            "free_memory_bytes",
        ):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: {attr} must be a non-negative integer, got {value!r}")
        if self.free_devices > self.device_count:
            raise ValueError(
                f"{self.name}: free_devices ({self.free_devices}) exceeds device_count ({self.device_count})"
            )
        flags = frozenset(_normalise_flag(f) for f in self.cpu_flags)
        object.__setattr__(self, "cpu_flags", flags)
        object.__setattr__(self, "taints", tuple(self.taints))
        object.__setattr__(self, "isa", cpu_isa(flags))
        memory_mib = self.device_memory_mib
        if self.accelerator_type != "cpu" and not memory_mib:
            memory_mib = known_device_memory_mib(self.accelerator_model)
            object.__setattr__(self, "device_memory_mib", memory_mib)
        if self.accelerator_type == "cpu":
            key = f"cpu|{self.isa}"
        else:
            key = f"{self.accelerator_type}|{self.accelerator_model}|{memory_mib}"
        object.__setattr__(self, "class_key", key)
        object.__setattr__(self, "cpu_request_cores", _cpu_cores_request(self))
        object.__setattr__(self, "blocked_reason", self._blocked())

    def _blocked(self) -> str:
        if not self.ready:
            return "not ready"
        blocking = [t for t in self.taints if _taint_blocks(t)]
        if not self.schedulable:
            return f"unschedulable (taint {', '.join(blocking)})" if blocking else "unschedulable (cordoned)"
        if blocking:
            return f"unschedulable (taint {', '.join(blocking)})"
        return ""

    @property
    def device_memory_bytes(self) -> int:
        return self.device_memory_mib * MIB


def _taint_blocks(taint: str) -> bool:
    key_value, _, effect = taint.rpartition(":")
    if effect not in ("NoSchedule", "NoExecute"):
        return False
    return key_value.split("=", 1)[0] not in TOLERATED_TAINT_KEYS


# ------------------------------------------------------------------------------------------- estimate


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Memory breakdown for one layout (device type * tensor-parallel size); bytes unless named otherwise."""

    model: str
    dtype: str
    quantization: str | None
    device_type: str
    tensor_parallel_size: int
    context_len: int
    concurrency: int
    bytes_per_param: float
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    overhead_bytes: int  # summed over the TP group
    per_device_bytes: int
    total_bytes: int  # weights + kv_cache + overhead

    def as_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__slots__}
        data.update(
            weights_gib=round(self.weights_bytes / GIB, 2),
            kv_cache_gib=round(self.kv_cache_bytes / GIB, 2),
            overhead_gib=round(self.overhead_bytes / GIB, 2),
            per_device_gib=round(self.per_device_bytes / GIB, 2),
            total_gib=round(self.total_bytes / GIB, 2),
        )
        return data


def normalise_dtype(model: ModelSpec, dtype: str | None) -> str:
    if dtype is None or str(dtype).lower() == "auto":
        return model.default_dtype
    canonical = DTYPE_ALIASES.get(str(dtype).lower())
    if canonical is None:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return canonical


def normalise_quantization(quantization: str | None) -> str | None:
    if quantization is None or str(quantization).lower() in ("", "none"):
        return None
    name = str(quantization).lower()
    if name not in BYTES_PER_QUANTIZED_PARAM:
        raise ValueError(
            f"quantization must be none or one of {', '.join(BYTES_PER_QUANTIZED_PARAM)}, "
            f"got {quantization!r}"
        )
    return name


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_context(model: ModelSpec, context_len: object) -> int:
    context = _positive_int("context_len", context_len)
    if context > model.max_context:
        raise ValueError(
            f"context_len {context} exceeds {model.name}'s maximum context of {model.max_context}"
        )
    return context


def _weights_bytes(model: ModelSpec, dtype: str, quantization: str | None) -> tuple[int, float]:
    dtype_bytes = BYTES_PER_DTYPE[dtype]
    if quantization is None:
        return math.ceil(model.params * dtype_bytes), dtype_bytes
    per_param = BYTES_PER_QUANTIZED_PARAM[quantization]
    kept = min(model.embedding_params, model.params)
    return math.ceil((model.params - kept) * per_param + kept * dtype_bytes), per_param


def kv_bytes_per_token(model: ModelSpec, dtype: str) -> int:
    """2 (K and V) * layers * kv_heads * head_dim * bytes; 0 for encoder-only embedding models."""
    if model.kind == EMBEDDING:
        return 0
    return int(2 * model.num_layers * model.num_kv_heads * model.head_dim * BYTES_PER_DTYPE[dtype])


def _per_device(base_bytes: int, tp: int, overhead: RuntimeOverhead) -> int:
    return math.ceil(base_bytes / tp * (1 + overhead.fraction)) + overhead.fixed_bytes


def _buffer(model_memory: int) -> int:
    return 2 * GIB if model_memory > 10 * GIB else GIB


def estimate_memory(
    model: str | Mapping | ModelSpec,
    *,
    dtype: str | None = "auto",
    quantization: str | None = None,
    context_len: int,
    concurrency: int = 1,
    device_type: str = "cuda",
    tensor_parallel_size: int = 1,
) -> MemoryEstimate:
    """Memory needed to serve `model` (formulas in the module docstring)."""
    spec = resolve_model(model)
    dtype_name = normalise_dtype(spec, dtype)
    quant = normalise_quantization(quantization)
    context = _check_context(spec, context_len)
    conc = _positive_int("concurrency", concurrency)
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type must be one of {', '.join(DEVICE_TYPES)}, got {device_type!r}")
    tp = _positive_int("tensor_parallel_size", tensor_parallel_size)
    weights, per_param = _weights_bytes(spec, dtype_name, quant)
    per_token = kv_bytes_per_token(spec, dtype_name)
    kv = per_token * context * conc
    per_device = _per_device(weights + kv, tp, RUNTIME_OVERHEAD[device_type])
    overhead = per_device * tp - weights - kv
    return MemoryEstimate(
        model=spec.name,
        dtype=dtype_name,
        quantization=quant,
        device_type=device_type,
        tensor_parallel_size=tp,
        context_len=context,
        concurrency=conc,
        bytes_per_param=per_param,
        weights_bytes=weights,
        kv_bytes_per_token=per_token,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        per_device_bytes=per_device,
        total_bytes=weights + kv + overhead,
    )


def valid_tensor_parallel_sizes(model: ModelSpec, limit: int = MAX_TENSOR_PARALLEL) -> list[int]:
    """Powers of two ≤ limit dividing both the attention heads and the KV heads (vLLM refuses others)."""
    sizes = []
    tp = 1
    while tp <= limit:
        if model.num_attention_heads % tp == 0 and model.num_kv_heads % tp == 0:
            sizes.append(tp)
        tp *= 2
    return sizes


def max_model_len_for(model: str | Mapping | ModelSpec, input_tokens: int, output_tokens: int) -> int:
    """(input + output) * 1.1, capped at the model's context: the context_len to plan and serve with."""
    spec = resolve_model(model)
    total = _positive_int("input_tokens", input_tokens) + _positive_int("output_tokens", output_tokens)
    return min(math.ceil(total * MAX_MODEL_LEN_MARGIN), spec.max_context)


# ------------------------------------------------------------------------------------------- results


class Refusal(NamedTuple):
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to run every replica: a device class, a TP size and the node of each replica.

    For CPU, "device" means the node: memory figures are the replica's memory request and the node's free
    memory. `cpu_millicores` and `host_memory_bytes` are the per-replica container requests.
    """

    device_type: str
    accelerator_model: str
    tensor_parallel_size: int
    replicas: int
    replica_nodes: tuple[str, ...]
    memory_per_device_bytes: int
    usable_memory_per_device_bytes: int
    device_memory_bytes: int
    host_memory_bytes: int
    cpu_millicores: int
    headroom: float
    cpu_isa: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.replica_nodes[0]

    @property
    def nodes(self) -> list[str]:
        """Distinct nodes, in replica order."""
        return list(dict.fromkeys(self.replica_nodes))

    @property
    def devices_per_replica(self) -> int:
        return 0 if self.device_type == "cpu" else self.tensor_parallel_size

    @property
    def total_devices(self) -> int:
        return self.devices_per_replica * self.replicas

    def sort_key(self) -> tuple:
        if self.device_type == "cpu":
            return (1, 0, ISA_RANK.get(self.cpu_isa, 9), -self.headroom, self.node)
        return (0, self.total_devices, -self.headroom, self.device_type, self.accelerator_model, self.node)

    def describe(self) -> str:
        where = ", ".join(self.nodes)
        if self.device_type == "cpu":
            return (
                f"cpu ({ISA_LABEL.get(self.cpu_isa, self.cpu_isa)}) {TIMES} {self.replicas} on {where}: "
                f"{_gib(self.memory_per_device_bytes)} GiB per replica, headroom {self.headroom:.0%}"
            )
        return (
            f"{self.device_type} {self.accelerator_model} TP {self.tensor_parallel_size} "
            f"{TIMES} {self.replicas} on {where}: {_gib(self.memory_per_device_bytes)} of "
            f"{_gib(self.usable_memory_per_device_bytes)} GiB usable per device, headroom {self.headroom:.0%}"
        )

    def as_dict(self) -> dict:
        return {
            "device_type": self.device_type,
            "accelerator_model": self.accelerator_model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "replicas": self.replicas,
            "node": self.node,
            "nodes": self.nodes,
            "replica_nodes": list(self.replica_nodes),
            "devices_per_replica": self.devices_per_replica,
            "total_devices": self.total_devices,
            "memory_per_device_bytes": self.memory_per_device_bytes,
            "usable_memory_per_device_bytes": self.usable_memory_per_device_bytes,
            "device_memory_bytes": self.device_memory_bytes,
            "host_memory_bytes": self.host_memory_bytes,
            "cpu_millicores": self.cpu_millicores,
            "headroom": round(self.headroom, 4),
            "cpu_isa": self.cpu_isa,
            "node_selector": dict(self.node_selector),
            "summary": self.describe(),
        }


class RefusalList(Sequence[Refusal]):
    """Per-node refusals, formatted when read.

    The decision only needs to know which nodes were refused; the sentences are built on access (all of
    them once, on iteration), so a plan over 20,000 nodes that shows the first 200 reasons formats 200.
    """

    __slots__ = ("_all", "_nodes", "_reason")

    def __init__(self, nodes: list[NodeCapacity], reason: Callable[[NodeCapacity], str]) -> None:
        self._nodes = nodes
        self._reason = reason
        self._all: list[Refusal] | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    def _materialise(self) -> list[Refusal]:
        if self._all is None:
            reason = self._reason
            self._all = [Refusal(node.name, reason(node)) for node in self._nodes]
        return self._all

    def __iter__(self) -> Iterator[Refusal]:
        return iter(self._materialise())

    @overload
    def __getitem__(self, index: int) -> Refusal: ...
    @overload
    def __getitem__(self, index: slice) -> list[Refusal]: ...
    def __getitem__(self, index: int | slice) -> Refusal | list[Refusal]:
        if self._all is not None:
            return self._all[index]
        if isinstance(index, slice):
            return [Refusal(node.name, self._reason(node)) for node in self._nodes[index]]
        node = self._nodes[index]
        return Refusal(node.name, self._reason(node))

    def __repr__(self) -> str:
        return f"RefusalList({len(self)} nodes)"


@dataclass(frozen=True, slots=True)
class PlacementResult:
    model: ModelSpec
    estimate: MemoryEstimate  # for the best candidate's layout
    dtype: str
    quantization: str | None
    context_len: int
    concurrency: int
    replicas: int
    device_type: str  # as requested ("auto" allowed)
    gpu_memory_utilization: float
    candidates: tuple[Candidate, ...]
    refusals: Sequence[Refusal]  # nodes that cannot host even one replica, with the reason

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def refusal_messages(self) -> list[str]:
        return [str(r) for r in self.refusals]

    def as_dict(self, *, max_refusals: int | None = 200) -> dict:
        refusals = self.refusals if max_refusals is None else self.refusals[:max_refusals]
        return {
            "model": self.model.as_dict(),
            "dtype": self.dtype,
            "quantization": self.quantization,
            "context_len": self.context_len,
            "concurrency": self.concurrency,
            "replicas": self.replicas,
            "device_type": self.device_type,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "estimate": self.estimate.as_dict(),
            "candidates": [c.as_dict() for c in self.candidates],
            "refusals": [str(r) for r in refusals],
            "refusals_total": len(self.refusals),
        }


class PlacementError(Exception):
    """Nothing fits; `refusals` says why per node, `summary` why overall (e.g. too few nodes for replicas).

    `estimate` is the memory breakdown at TP 1 on the requested device type (cuda for auto).
    """

    def __init__(self, summary: str, refusals: Sequence[Refusal], estimate: MemoryEstimate) -> None:
        self.summary = summary
        self.refusals = refusals
        self.estimate = estimate
        super().__init__(summary)

    @property
    def refusal_messages(self) -> list[str]:
        return [str(r) for r in self.refusals]

    def as_dict(self, *, max_refusals: int | None = 200) -> dict:
        refusals = self.refusals if max_refusals is None else self.refusals[:max_refusals]
        return {
            "detail": self.summary,
            "estimate": self.estimate.as_dict(),
            "refusals": [str(r) for r in refusals],
            "refusals_total": len(self.refusals),
        }

    def __str__(self) -> str:
        shown = "; ".join(str(r) for r in self.refusals[:20])
        more = f"; … {len(self.refusals) - 20} more" if len(self.refusals) > 20 else ""
        return f"{self.summary}{': ' + shown + more if shown else ''}"


# ------------------------------------------------------------------------------------------- planning


@dataclass(slots=True)
class _Plan:
    """Request-wide figures shared by every class evaluation."""

    model: ModelSpec
    dtype: str
    quantization: str | None
    base_bytes: int  # weights + KV cache, before overhead
    weights_bytes: int
    kv_cache_bytes: int
    device_types: frozenset[str]
    requested: str
    utilization: float
    tps: list[int]
    context_len: int = 0
    concurrency: int = 0
    replicas: int = 1


@dataclass(slots=True)
class _Class:
    """Evaluation shared by every node with the same class key."""

    device_type: str
    refusal: str = ""
    model_name: str = ""
    device_memory: int = 0
    usable: int = 0
    fits: list[tuple[int, int]] = field(default_factory=list)  # (tp, bytes per device) that fit
    host_need: int = 0  # container memory request per replica
    isa: str = ""
    by_free: dict[int, list[NodeCapacity]] = field(default_factory=dict)  # accelerators: free devices → nodes
    fit_nodes: list[NodeCapacity] = field(default_factory=list)  # cpu
    messages: dict[tuple, str] = field(default_factory=dict)  # reason cache for identical refused nodes
    # Thresholds of the hot loop: the smallest TP that fits, the devices and CPU it needs.
    is_cpu: bool = False
    min_devices: int = 0
    min_cpu_millicores: int = 0
    # Lowest sort key any candidate of this class can have (the fleet planner stops at the first class that beats
    # the next one's bound); empty until first asked for.
    bound: tuple = ()


def _accelerator_cpu_millicores(tp: int) -> int:
    return (ACCELERATOR_CPU_BASE_CORES + ACCELERATOR_CPU_CORES_PER_DEVICE * tp) * 1000


def _evaluate_class(node: NodeCapacity, plan: _Plan) -> _Class:
    device_type = node.accelerator_type
    ev = _Class(device_type=device_type, model_name=node.accelerator_model, isa=node.isa)
    if device_type not in plan.device_types:
        ev.refusal = (
            f"{device_type} node, {plan.requested} requested"
            if device_type != "cpu"
            else f"no accelerators (cpu node), {plan.requested} requested"
        )
        return ev
    if device_type == "cpu":
        if not node.isa:
            ev.refusal = "CPU lacks AVX2 (the vLLM CPU backend needs AVX2 at least)"
            return ev
        if plan.quantization in CPU_UNSUPPORTED_QUANTIZATION:
            ev.refusal = f"{plan.quantization} weights are not supported by the vLLM CPU backend"
            return ev
        need = _per_device(plan.base_bytes, 1, RUNTIME_OVERHEAD["cpu"])
        ev.host_need = need + _buffer(need)
        ev.is_cpu = True
        return ev
    ev.device_memory = node.device_memory_bytes
    if not ev.device_memory:
        ev.refusal = (
            f"memory per {_device_word(device_type)} unknown for {node.accelerator_model or 'device'}"
        )
        return ev
    ev.usable = int(ev.device_memory * plan.utilization)
    overhead = RUNTIME_OVERHEAD[device_type]
    ev.fits = [
        (tp, need) for tp in plan.tps if (need := _per_device(plan.base_bytes, tp, overhead)) <= ev.usable
    ]
    ev.host_need = plan.weights_bytes + _buffer(plan.weights_bytes)
    # No fitting TP: a threshold no node meets sends every node of the class to the refusal path.
    ev.min_devices = ev.fits[0][0] if ev.fits else MAX_TENSOR_PARALLEL * 1024
    ev.min_cpu_millicores = _accelerator_cpu_millicores(ev.min_devices) if ev.fits else 0
    return ev


def _accelerator_refusal(node: NodeCapacity, ev: _Class, plan: _Plan) -> str:
    """Why an accelerator node in a fitting class cannot take one replica.

    Sentences are cached on the few figures each one depends on, so identical nodes share one string.
    """
    word = _device_word(ev.device_type)
    if not node.device_count:
        return (
            f"no allocatable {word}s ({ACCELERATOR_RESOURCE[ev.device_type]} not reported by a device plugin)"
        )
    fit = next((tp for tp, _ in ev.fits if tp <= node.device_count), None)
    if fit is None:
        key: tuple = ("memory", node.device_count, node.free_devices)
        message = ev.messages.get(key)
        if message is None:
            message = ev.messages[key] = _memory_refusal(node, ev, plan, word)
        return message
    if node.free_devices < fit:
        key = ("devices", node.free_devices, fit)
        message = ev.messages.get(key)
        if message is None:
            message = ev.messages[key] = f"{_plural(node.free_devices, 'free ' + word)}, needs {fit}"
        return message
    if node.free_memory_bytes < ev.host_need:
        return (
            f"host memory {_gib(node.free_memory_bytes)} GiB free < {_gib(ev.host_need)} GiB needed "
            f"to load the weights"
        )
    needed = _accelerator_cpu_millicores(fit)
    return f"{node.free_cpu_millicores / 1000:g} free CPU cores, needs {needed / 1000:g}"


def _memory_refusal(node: NodeCapacity, ev: _Class, plan: _Plan, word: str) -> str:
    """The model does not fit the node's devices even at the largest TP the node and the model allow."""
    tp = ([size for size in plan.tps if size <= node.device_count] or [1])[-1]
    need = _per_device(plan.base_bytes, tp, RUNTIME_OVERHEAD[ev.device_type])
    message = (
        f"{ev.model_name or word} {_gib(ev.device_memory)} GiB {TIMES} {node.free_devices} free; "
        f"model needs {_gib(need)} GiB per device at TP {tp} but only {_gib(ev.usable)} GiB usable "
        f"(gpu_memory_utilization {plan.utilization:g})"
    )
    if tp < node.device_count:
        # Say what stopped TP from growing to the node's size: the head counts or the caller's max_tp.
        bigger = tp * 2
        heads = plan.model.num_attention_heads % bigger or plan.model.num_kv_heads % bigger
        message += "; larger TP " + (
            f"must divide {plan.model.num_attention_heads} attention and {plan.model.num_kv_heads} KV heads"
            if heads
            else f"excluded by max_tp {plan.tps[-1] if plan.tps else 1}"
        )
    return message


def _refusal_reason(node: NodeCapacity, classes: dict[str, _Class], plan: _Plan) -> str:
    if node.blocked_reason:
        return node.blocked_reason
    ev = classes[node.class_key]
    if ev.refusal:
        return ev.refusal
    if not ev.is_cpu:
        return _accelerator_refusal(node, ev, plan)
    if node.free_memory_bytes < ev.host_need:
        return f"{_gib(node.free_memory_bytes)} GiB < {_gib(ev.host_need)} GiB needed"
    return (
        f"{max(node.cpu_request_cores, 0)} CPU cores available after {CPU_RESERVED_CORES} reserved, "
        f"needs {MIN_CPU_CORES}"
    )


def _spread(chosen: list[tuple[NodeCapacity, int]], replicas: int) -> tuple[str, ...] | None:
    """One replica per node first, then more on nodes with room; None when capacity is short."""
    if replicas == 1:  # the common case, once per cluster in a fleet plan: the first node chosen
        return (chosen[0][0].name,) if chosen else None
    if sum(cap for _, cap in chosen) < replicas:
        return None
    counts = [0] * len(chosen)
    placed = 0
    while placed < replicas:
        for i, (_, cap) in enumerate(chosen):
            if counts[i] < cap and placed < replicas:
                counts[i] += 1
                placed += 1
    return tuple(node.name for (node, _), count in zip(chosen, counts, strict=True) for _ in range(count))


def _node_selector(device_type: str, nodes: list[NodeCapacity], model_name: str) -> dict[str, str]:
    label = PRODUCT_LABEL.get(device_type)
    if label:
        values = {
            n.labels.get(label) or (n.accelerator_model if device_type == "cuda" else "") for n in nodes
        }
        if len(values) == 1 and (value := values.pop()):
            return {label: value}
    if len(nodes) == 1:
        return {HOSTNAME_LABEL: nodes[0].labels.get(HOSTNAME_LABEL, nodes[0].name)}
    return {}


def _accelerator_candidates(
    ev: _Class, replicas: int, *, first_only: bool = False
) -> tuple[list[Candidate], str]:
    """Candidates of one accelerator class, smallest TP first; ``first_only`` stops at the first one placed
    (the best of the class: a larger TP only adds devices)."""
    candidates = []
    shortfall = ""
    free_counts = sorted(ev.by_free)
    for tp, need in ev.fits:
        if first_only and candidates:
            break
        cpu_need = _accelerator_cpu_millicores(tp)
        chosen: list[tuple[NodeCapacity, int]] = []
        capacity = 0
        # Best fit: nodes with the fewest free devices that still take this TP come first.
        for free in free_counts:
            if free < tp:
                continue
            for node in ev.by_free[free]:
                cap = min(
                    free // tp, node.free_memory_bytes // ev.host_need, node.free_cpu_millicores // cpu_need
                )
                if cap:
                    chosen.append((node, cap))
                    capacity += cap
                    if len(chosen) >= replicas:
                        break
            if len(chosen) >= replicas:
                break
        placement = _spread(chosen, replicas)
        if placement is None:
            if capacity:
                shortfall = (
                    f"{ev.device_type} {ev.model_name} at TP {tp}: room for {capacity} of {replicas} replicas"
                )
            continue
        placed = set(placement)
        used = [node for node, _ in chosen if node.name in placed]
        candidates.append(
            Candidate(
                device_type=ev.device_type,
                accelerator_model=ev.model_name,
                tensor_parallel_size=tp,
                replicas=replicas,
                replica_nodes=placement,
                memory_per_device_bytes=need,
                usable_memory_per_device_bytes=ev.usable,
                device_memory_bytes=ev.device_memory,
                host_memory_bytes=ev.host_need,
                cpu_millicores=cpu_need,
                headroom=(ev.usable - need) / ev.usable,
                node_selector=_node_selector(ev.device_type, used, ev.model_name),
            )
        )
    return candidates, shortfall


def _cpu_candidate(ev: _Class, replicas: int) -> tuple[Candidate | None, str]:
    # One replica per CPU node: the engine pins its threads to the physical cores, so two engines on one
    # node would fight over them.
    if len(ev.fit_nodes) < replicas:
        if ev.fit_nodes:
            return None, (
                f"cpu ({ISA_LABEL[ev.isa]}): {_plural(len(ev.fit_nodes), 'node')} fit, "
                f"{replicas} replicas requested (one per CPU node)"
            )
        return None, ""
    chosen = heapq.nlargest(replicas, ev.fit_nodes, key=lambda n: n.free_memory_bytes)
    smallest = chosen[-1].free_memory_bytes
    cores = min(n.cpu_request_cores for n in chosen)
    return Candidate(
        device_type="cpu",
        accelerator_model="",
        tensor_parallel_size=1,
        replicas=replicas,
        replica_nodes=tuple(n.name for n in chosen),
        memory_per_device_bytes=ev.host_need,
        usable_memory_per_device_bytes=smallest,
        device_memory_bytes=smallest,
        host_memory_bytes=ev.host_need,
        cpu_millicores=cores * 1000,
        headroom=(smallest - ev.host_need) / smallest,
        cpu_isa=ev.isa,
        node_selector=_node_selector("cpu", chosen, ""),
    ), ""


def prepare_plan(
    model: str | Mapping | ModelSpec,
    *,
    dtype: str | None = "auto",
    quantization: str | None = None,
    context_len: int,
    concurrency: int,
    device_type: str = "auto",
    replicas: int = 1,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_tp: int | None = None,
) -> _Plan:
    """The request checked and its node-independent figures computed once (ValueError for bad input); one
    plan serves every node of one cluster or of a whole fleet."""
    spec = resolve_model(model)
    dtype_name = normalise_dtype(spec, dtype)
    quant = normalise_quantization(quantization)
    context = _check_context(spec, context_len)
    conc = _positive_int("concurrency", concurrency)
    count = _positive_int("replicas", replicas)
    if device_type != "auto" and device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type must be auto or one of {', '.join(DEVICE_TYPES)}, got {device_type!r}")
    if (
        isinstance(gpu_memory_utilization, bool)
        or not isinstance(gpu_memory_utilization, int | float)
        or not 0 < gpu_memory_utilization <= 1
    ):
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    limit = MAX_TENSOR_PARALLEL
    if max_tp is not None:
        limit = _positive_int("max_tp", max_tp)
        if limit & (limit - 1):
            raise ValueError(f"max_tp must be a power of two, got {max_tp}")
    weights, _ = _weights_bytes(spec, dtype_name, quant)
    kv = kv_bytes_per_token(spec, dtype_name) * context * conc
    return _Plan(
        model=spec,
        dtype=dtype_name,
        quantization=quant,
        base_bytes=weights + kv,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        device_types=frozenset(DEVICE_TYPES if device_type == "auto" else (device_type,)),
        requested=device_type,
        utilization=float(gpu_memory_utilization),
        tps=valid_tensor_parallel_sizes(spec, limit),
        context_len=context,
        concurrency=conc,
        replicas=count,
    )


def classify_nodes(
    nodes: Sequence[NodeCapacity], plan: _Plan, classes: dict[str, _Class]
) -> tuple[list[NodeCapacity], dict[str, _Class]]:
    """Sort the nodes of one cluster into the refused ones and the class buckets candidates are drawn from.

    ``classes`` caches the per-class evaluation and may be shared by several calls with the same plan (the fleet
    planner shares it across clusters); the buckets of the returned classes (``used``) hold this call's nodes only.
    """
    refused: list[NodeCapacity] = []
    used: dict[str, _Class] = {}
    # The hot loop: a few attribute reads and comparisons per node; everything costly happens once per
    # class, and refusal sentences are written only when read (RefusalList).
    for node in nodes:
        if not isinstance(node, NodeCapacity):
            raise ValueError(f"nodes must contain NodeCapacity rows, got {type(node).__name__}")
        if node.blocked_reason:
            refused.append(node)
            continue
        key = node.class_key
        ev = used.get(key)
        if ev is None:
            ev = classes.get(key)
            if ev is None:
                ev = classes[key] = _evaluate_class(node, plan)
            else:
                # Evaluated for an earlier call: keep the evaluation, start this call's buckets afresh.
                ev.by_free = {}
                ev.fit_nodes = []
            used[key] = ev
        if ev.refusal:
            refused.append(node)
        elif ev.is_cpu:
            if node.free_memory_bytes >= ev.host_need and node.cpu_request_cores >= MIN_CPU_CORES:
                ev.fit_nodes.append(node)
            else:
                refused.append(node)
        elif (
            node.free_devices >= ev.min_devices
            and node.free_memory_bytes >= ev.host_need
            and node.free_cpu_millicores >= ev.min_cpu_millicores
        ):
            bucket = ev.by_free.get(node.free_devices)
            if bucket is None:
                ev.by_free[node.free_devices] = [node]
            else:
                bucket.append(node)
        else:
            refused.append(node)
    return refused, used


def node_refusals(refused: list[NodeCapacity], classes: dict[str, _Class], plan: _Plan) -> RefusalList:
    """The refused nodes with their reasons, written when read."""
    return RefusalList(refused, refusal_reason(classes, plan))


def refusal_reason(classes: dict[str, _Class], plan: _Plan) -> Callable[[NodeCapacity], str]:
    """Why a node refused by ``classify_nodes`` cannot take a replica: one function for every node of the plan (the
    fleet planner shares it over all its clusters' ``RefusalList``)."""
    return lambda node: _refusal_reason(node, classes, plan)


def class_candidates(ev: _Class, replicas: int, *, first_only: bool = False) -> tuple[list[Candidate], str]:
    """Candidates of one class whose buckets are filled (none for a refused class), and the shortfall sentence
    when its nodes have room for some replicas but not all."""
    if ev.refusal:
        return [], ""
    if ev.is_cpu:
        cpu, short = _cpu_candidate(ev, replicas)
        return ([cpu] if cpu is not None else []), short
    return _accelerator_candidates(ev, replicas, first_only=first_only)


def class_bound(ev: _Class, replicas: int) -> tuple:
    """A tuple no candidate of this class sorts before (a prefix of ``Candidate.sort_key`` of its best case)."""
    if not ev.bound:
        if ev.is_cpu:
            ev.bound = (1, 0, ISA_RANK.get(ev.isa, 9))
        elif ev.fits:
            tp, need = ev.fits[0]
            ev.bound = (0, tp * replicas, -(ev.usable - need) / ev.usable, ev.device_type, ev.model_name)
        else:
            ev.bound = (2,)
    return ev.bound


def plan_estimate(plan: _Plan, device_type: str, tensor_parallel_size: int) -> MemoryEstimate:
    return estimate_memory(
        plan.model,
        dtype=plan.dtype,
        quantization=plan.quantization,
        context_len=plan.context_len,
        concurrency=plan.concurrency,
        device_type=device_type,
        tensor_parallel_size=tensor_parallel_size,
    )


def no_fit_summary(plan: _Plan) -> str:
    """The request in one phrase, for refusals: "no placement for <model> (<dtype>, context …; weights …)"."""
    quant = plan.quantization
    return (
        f"no placement for {plan.model.name} ({plan.dtype}"
        f"{', ' + quant if quant else ''}, context {plan.context_len} {TIMES} {plan.concurrency} concurrent, "
        f"{_plural(plan.replicas, 'replica')}; weights {_gib(plan.weights_bytes)} GiB, "
        f"KV cache {_gib(plan.kv_cache_bytes)} GiB)"
    )


def plan_placement(
    model: str | Mapping | ModelSpec,
    *,
    dtype: str | None = "auto",
    quantization: str | None = None,
    context_len: int,
    concurrency: int,
    device_type: str = "auto",
    replicas: int = 1,
    nodes: Sequence[NodeCapacity],
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_tp: int | None = None,
) -> PlacementResult:
    """Candidate placements, best first; PlacementError (with per-node refusals) when none fits.

    `model` is a catalog name, a ModelSpec or a request dict (see catalog.model_from_dict). Invalid
    arguments raise ValueError with a message meant for the API caller.
    """
    plan = prepare_plan(
        model,
        dtype=dtype,
        quantization=quantization,
        context_len=context_len,
        concurrency=concurrency,
        device_type=device_type,
        replicas=replicas,
        gpu_memory_utilization=gpu_memory_utilization,
        max_tp=max_tp,
    )
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Sequence | Iterable):
        raise ValueError("nodes must be a list of NodeCapacity")
    if not isinstance(nodes, Sequence):
        nodes = list(nodes)

    classes: dict[str, _Class] = {}
    refused, used = classify_nodes(nodes, plan, classes)
    refusals = node_refusals(refused, classes, plan)

    count = plan.replicas
    candidates: list[Candidate] = []
    shortfalls: list[str] = []
    for ev in used.values():
        found, short = class_candidates(ev, count)
        candidates.extend(found)
        if short:
            shortfalls.append(short)
    candidates.sort(key=Candidate.sort_key)

    if candidates:
        layout = (candidates[0].device_type, candidates[0].tensor_parallel_size)
    else:
        layout = ("cuda" if device_type == "auto" else device_type, 1)
    estimate = plan_estimate(plan, *layout)
    if not candidates:
        summary = no_fit_summary(plan)
        if shortfalls:
            summary += "; " + "; ".join(shortfalls)
        if not nodes:
            summary += "; the cluster inventory is empty"
        raise PlacementError(summary, refusals, estimate)
    return PlacementResult(
        model=plan.model,
        estimate=estimate,
        dtype=plan.dtype,
        quantization=plan.quantization,
        context_len=plan.context_len,
        concurrency=plan.concurrency,
        replicas=count,
        device_type=device_type,
        gpu_memory_utilization=plan.utilization,
        candidates=tuple(candidates),
        refusals=refusals,
    )
