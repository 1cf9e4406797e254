"""Placement decisions on small inventories a platform operator would recognise."""

import re

import pytest

from deployments.charts import runtime_values, vllm_args
from deployments.placement import GIB, NodeCapacity, PlacementError, estimate_memory, plan_placement

H100 = "NVIDIA-H100-80GB-HBM3"
H100_MIB = 81_559
AMX = frozenset({"AVX2", "AVX512F", "AVX512VNNI", "AMXBF16", "AMXINT8"})
AVX512 = frozenset({"AVX2", "AVX512F", "AVX512VNNI"})
AVX2 = frozenset({"AVX", "AVX2"})


def gpu_node(
    name, *, free=8, count=8, model=H100, memory_mib=H100_MIB, kind="cuda", host_gib=2048, cores=96, **extra
):
    return NodeCapacity(
        name=name,
        accelerator_type=kind,
        accelerator_vendor="nvidia" if kind == "cuda" else "",
        accelerator_model=model,
        device_count=count,
        free_devices=free,
        device_memory_mib=memory_mib,
        cpu_cores=cores,
        free_cpu_millicores=cores * 2000,
        memory_bytes=host_gib * GIB,
        free_memory_bytes=host_gib * GIB,
        cpu_flags=AMX,
        labels={"nvidia.com/gpu.product": model} if kind == "cuda" else {},
        **extra,
    )


def cpu_node(name, *, flags=AMX, free_gib=512, cores=64, **extra):
    return NodeCapacity(
        name=name,
        accelerator_type="cpu",
        cpu_cores=cores,
        free_cpu_millicores=cores * 2000,
        memory_bytes=free_gib * GIB,
        free_memory_bytes=free_gib * GIB,
        cpu_flags=flags,
        **extra,
    )


def gaudi_node(name, model, *, free=8):
    return NodeCapacity(
        name=name,
        accelerator_type="hpu",
        accelerator_vendor="intel",
        accelerator_model=model,
        device_count=8,
        free_devices=free,
        device_memory_mib=0,
        cpu_cores=80,
        free_cpu_millicores=160_000,
        memory_bytes=1024 * GIB,
        free_memory_bytes=1024 * GIB,
        cpu_flags=AMX,
    )


def refusal_for(error_or_result, node):
    reasons = [r.reason for r in error_or_result.refusals if r.node == node]
    assert reasons, f"no refusal for {node}"
    return reasons[0]


# ----------------------------------------------------------------------------------------- TP choices


def test_8b_runs_on_one_80gb_gpu():
    result = plan_placement(
        "llama-3.1-8b-instruct", context_len=8192, concurrency=16, nodes=[gpu_node("h100-1", count=1, free=1)]
    )
    best = result.best
    assert (best.device_type, best.tensor_parallel_size, best.node) == ("cuda", 1, "h100-1")
    assert best.memory_per_device_bytes <= best.usable_memory_per_device_bytes
    assert 0 < best.headroom < 1


def test_70b_bf16_needs_tp2_for_short_contexts_and_tp4_for_many_long_ones():
    nodes = [gpu_node("h100-1")]
    short = plan_placement("llama-3.1-70b", dtype="bfloat16", context_len=4096, concurrency=4, nodes=nodes)
    busy = plan_placement("llama-3.1-70b", dtype="bfloat16", context_len=8192, concurrency=32, nodes=nodes)
    assert short.best.tensor_parallel_size == 2
    assert busy.best.tensor_parallel_size == 4
    for result in (short, busy):
        for candidate in result.candidates:
            tp = candidate.tensor_parallel_size
            assert tp & (tp - 1) == 0 and 64 % tp == 0 and 8 % tp == 0


def test_70b_never_fits_one_80gb_gpu():
    result = plan_placement("llama-3.1-70b", context_len=1024, concurrency=1, nodes=[gpu_node("h100-1")])
    assert min(c.tensor_parallel_size for c in result.candidates) == 2


def test_tp_must_divide_the_kv_heads_even_when_a_larger_tp_would_fit():
    # Qwen2.5-7B has 28 attention heads and 4 KV heads: TP 8 is impossible, TP 4 does not fit on T4s here.
    t4 = gpu_node("t4-node", model="Tesla-T4", memory_mib=15_360)
    with pytest.raises(PlacementError) as error:
        plan_placement("qwen2.5-7b-instruct", context_len=32768, concurrency=24, nodes=[t4])
    reason = refusal_for(error.value, "t4-node")
    assert "at TP 4" in reason
    assert "must divide 28 attention and 4 KV heads" in reason


def test_lower_gpu_memory_utilization_or_max_tp_changes_the_choice():
    nodes = [gpu_node("h100-1")]
    roomy = plan_placement("llama-3.1-70b", context_len=4096, concurrency=4, nodes=nodes)
    tight = plan_placement(
        "llama-3.1-70b", context_len=4096, concurrency=4, nodes=nodes, gpu_memory_utilization=0.8
    )
    assert roomy.best.tensor_parallel_size == 2
    assert tight.best.tensor_parallel_size == 4
    capped = plan_placement("llama-3.1-8b", context_len=4096, concurrency=4, nodes=nodes, max_tp=2)
    assert {c.tensor_parallel_size for c in capped.candidates} == {1, 2}


def test_405b_bf16_is_refused_on_an_8x80gb_node_but_fp8_and_int4_fit():
    nodes = [gpu_node("h100-1"), gpu_node("h100-2", free=4)]
    with pytest.raises(PlacementError) as error:
        plan_placement("llama-3.1-405b", dtype="bfloat16", context_len=8192, concurrency=4, nodes=nodes)
    reason = refusal_for(error.value, "h100-1")
    assert re.fullmatch(
        r"NVIDIA-H100-80GB-HBM3 79\.6 GiB \u00d7 8 free; model needs \d+(\.\d)? GiB per device at TP 8 but only "
        r"71\.7 GiB usable \(gpu_memory_utilization 0\.9\)",
        reason,
    )
    assert "no placement for llama-3.1-405b" in str(error.value)
    assert error.value.estimate.weights_bytes > 800 * 10**9

    fp8 = plan_placement("llama-3.1-405b", quantization="fp8", context_len=8192, concurrency=4, nodes=nodes)
    assert (fp8.best.node, fp8.best.tensor_parallel_size) == ("h100-1", 8)
    assert vllm_args(runtime_values(fp8), with_storage=True)[-1] == "--quantization=fp8"

    int4 = plan_placement("llama-3.1-405b", quantization="awq", context_len=8192, concurrency=4, nodes=nodes)
    assert int4.best.tensor_parallel_size == 4
    assert int4.best.node == "h100-2"  # best fit: the half-used node, keeping the whole node free


# ----------------------------------------------------------------------------------------- device kinds


def test_cpu_placement_prefers_amx_then_avx512_then_avx2_and_refuses_cpus_without_avx2():
    nodes = [
        cpu_node("avx2-node", flags=AVX2, free_gib=1024),
        cpu_node("avx512-node", flags=AVX512, free_gib=768),
        cpu_node("amx-node", flags=AMX, free_gib=128),
        cpu_node("old-node", flags=frozenset({"AVX", "SSE4_2"}), free_gib=1024),
    ]
    result = plan_placement("llama-3.1-8b", context_len=4096, concurrency=4, device_type="cpu", nodes=nodes)
    assert [c.node for c in result.candidates] == ["amx-node", "avx512-node", "avx2-node"]
    assert [c.cpu_isa for c in result.candidates] == ["amx", "avx512", "avx2"]
    assert refusal_for(result, "old-node") == "CPU lacks AVX2 (the vLLM CPU backend needs AVX2 at least)"


def test_cpu_flags_are_accepted_in_nfd_spelling():
    node = cpu_node("spr", flags=frozenset({"avx2", "avx512f", "amx_bf16"}))
    assert node.isa == "amx"


def test_cpu_node_without_enough_memory_is_refused_with_both_figures():
    result_error = None
    with pytest.raises(PlacementError) as error:
        plan_placement(
            "llama-3.1-70b", context_len=4096, concurrency=4, nodes=[cpu_node("cpu-node", free_gib=64)]
        )
    result_error = error.value
    reason = refusal_for(result_error, "cpu-node")
    match = re.fullmatch(r"64 GiB < (\d+) GiB needed", reason)
    assert match and 131 < int(match.group(1)) < 170  # 131 GiB of weights plus cache and overhead


def test_fp8_is_refused_on_cpu():
    with pytest.raises(PlacementError) as error:
        plan_placement(
            "llama-3.1-8b", quantization="fp8", context_len=1024, concurrency=1, nodes=[cpu_node("cpu-1")]
        )
    assert "not supported by the vLLM CPU backend" in refusal_for(error.value, "cpu-1")


def test_embedding_model_fits_a_small_cpu_node():
    result = plan_placement(
        "bge-large-en-v1.5",
        context_len=512,
        concurrency=32,
        device_type="cpu",
        nodes=[cpu_node("cpu-1", free_gib=16, cores=8)],
    )
    values = runtime_values(result)
    assert values["model_kind"] == "embedding"
    assert values["cpu_request"] == "6"  # 8 physical cores, 2 left to the system
    assert vllm_args(values, with_storage=False)[-1] == "--task=embed"


def test_gaudi_nodes_use_their_known_memory_per_device():
    result = plan_placement(
        "llama-3.1-70b",
        context_len=4096,
        concurrency=4,
        device_type="hpu",
        nodes=[gaudi_node("gaudi2-1", "HL-225 Gaudi2"), gaudi_node("gaudi3-1", "Gaudi3")],
    )
    by_node = {c.node: c for c in result.candidates if c.tensor_parallel_size == 2}
    assert by_node["gaudi2-1"].device_memory_bytes == 96 * GIB
    assert by_node["gaudi3-1"].device_memory_bytes == 128 * GIB
    # Same device count, so the larger memory (more headroom) wins.
    assert result.best.node == "gaudi3-1"
    values = runtime_values(result)
    assert values["accelerator_resource"] == "habana.ai/gaudi"
    assert values["accelerator_count"] == 2
    assert values["node_selector"] == {"kubernetes.io/hostname": "gaudi3-1"}


def test_gaudi_refusal_counts_hpus():
    with pytest.raises(PlacementError) as error:
        plan_placement(
            "llama-3.1-70b", context_len=4096, concurrency=4, nodes=[gaudi_node("gaudi2-1", "Gaudi2", free=1)]
        )
    assert refusal_for(error.value, "gaudi2-1") == "1 free HPU, needs 2"


def test_auto_on_a_mixed_cluster_prefers_accelerators_then_falls_back_to_cpu():
    nodes = [cpu_node("cpu-1"), gpu_node("h100-1", free=1), gaudi_node("gaudi2-1", "Gaudi2", free=0)]
    result = plan_placement("llama-3.1-8b", context_len=4096, concurrency=8, nodes=nodes)
    assert [c.device_type for c in result.candidates] == ["cuda", "cpu"]
    assert refusal_for(result, "gaudi2-1") == "0 free HPUs, needs 1"

    busy = [cpu_node("cpu-1"), gpu_node("h100-1", free=0)]
    fallback = plan_placement("llama-3.1-8b", context_len=4096, concurrency=8, nodes=busy)
    assert fallback.best.device_type == "cpu"
    assert refusal_for(fallback, "h100-1") == "0 free GPUs, needs 1"


def test_fewest_devices_first_then_most_headroom():
    nodes = [gpu_node("l4-1", model="NVIDIA-L4", memory_mib=23_034, count=4, free=4), gpu_node("h100-1")]
    result = plan_placement("llama-3.1-8b", context_len=2048, concurrency=2, nodes=nodes)
    first, second = result.candidates[:2]
    assert (first.node, first.tensor_parallel_size) == ("h100-1", 1)
    assert (second.node, second.tensor_parallel_size) == ("l4-1", 1)
    assert first.headroom > second.headroom
    assert all(c.total_devices >= 1 for c in result.candidates)


def test_explicit_device_type_refuses_other_kinds_of_node():
    with pytest.raises(PlacementError) as error:
        plan_placement(
            "llama-3.1-8b",
            context_len=1024,
            concurrency=1,
            device_type="rocm",
            nodes=[gpu_node("h100-1"), cpu_node("cpu-1")],
        )
    assert refusal_for(error.value, "h100-1") == "cuda node, rocm requested"
    assert refusal_for(error.value, "cpu-1") == "no accelerators (cpu node), rocm requested"


def test_rocm_node_with_unknown_memory_uses_the_product_table():
    mi300 = gpu_node("mi300-1", kind="rocm", model="AMD-Instinct-MI300X", memory_mib=0)
    result = plan_placement("llama-3.1-70b", context_len=4096, concurrency=4, nodes=[mi300])
    assert result.best.tensor_parallel_size == 1  # 192 GB per device
    assert runtime_values(result)["accelerator_resource"] == "amd.com/gpu"


# ----------------------------------------------------------------------------------------- refusals


def test_refusals_explain_each_node():
    nodes = [
        gpu_node("gpu-node-1", free=2),
        cpu_node("cpu-node", free_gib=64),
        gpu_node("node-x", ready=False),
        cpu_node("cp-1", schedulable=False, taints=("node-role.kubernetes.io/control-plane:NoSchedule",)),
        cpu_node("drained", schedulable=False),
        gpu_node("l4-node", model="NVIDIA-L4", memory_mib=23_034, count=1, free=1),
        gpu_node("small-host", host_gib=32),
    ]
    with pytest.raises(PlacementError) as error:
        plan_placement("llama-3.1-70b", context_len=8192, concurrency=32, nodes=nodes)
    messages = error.value.refusal_messages
    assert "gpu-node-1: 2 free GPUs, needs 4" in messages
    assert "node-x: not ready" in messages
    assert "cp-1: unschedulable (taint node-role.kubernetes.io/control-plane:NoSchedule)" in messages
    assert "drained: unschedulable (cordoned)" in messages
    assert any(re.fullmatch(r"cpu-node: 64 GiB < \d+ GiB needed", m) for m in messages)
    assert any(
        re.fullmatch(
            r"l4-node: NVIDIA-L4 22\.5 GiB \u00d7 1 free; model needs \d+ GiB per device at TP 1 "
            r"but only 20\.2 GiB usable \(gpu_memory_utilization 0\.9\)",
            m,
        )
        for m in messages
    )
    assert any(m.startswith("small-host: host memory 32 GiB free < 133") for m in messages)
    assert len(messages) == len(nodes)


def test_device_plugin_taints_do_not_block_but_others_do():
    tolerated = gpu_node("gpu-1", taints=("nvidia.com/gpu=present:NoSchedule",))
    blocked = gpu_node("gpu-2", taints=("dedicated=training:NoExecute", "soft=yes:PreferNoSchedule"))
    result = plan_placement("llama-3.1-8b", context_len=1024, concurrency=1, nodes=[tolerated, blocked])
    assert {c.node for c in result.candidates} == {"gpu-1"}
    assert refusal_for(result, "gpu-2") == "unschedulable (taint dedicated=training:NoExecute)"


def test_empty_inventory_says_so():
    with pytest.raises(PlacementError, match="inventory is empty"):
        plan_placement("llama-3.1-8b", context_len=1024, concurrency=1, nodes=[])


# ----------------------------------------------------------------------------------------- replicas


def test_replicas_go_to_distinct_nodes_first():
    nodes = [gpu_node(f"gpu-{i}") for i in range(3)]
    result = plan_placement("llama-3.1-8b", context_len=4096, concurrency=8, replicas=3, nodes=nodes)
    assert sorted(result.best.replica_nodes) == ["gpu-0", "gpu-1", "gpu-2"]
    assert result.best.total_devices == 3


def test_replicas_share_a_node_when_nodes_run_out():
    nodes = [gpu_node("gpu-a", free=4), gpu_node("gpu-b", free=4)]
    result = plan_placement("llama-3.1-70b", context_len=4096, concurrency=4, replicas=4, nodes=nodes)
    best = result.best
    assert best.tensor_parallel_size == 2
    assert sorted(best.replica_nodes) == ["gpu-a", "gpu-a", "gpu-b", "gpu-b"]
    assert best.nodes == ["gpu-a", "gpu-b"]
    values = runtime_values(result)
    assert values["replicas"] == 4
    assert values["node_selector"] == {"nvidia.com/gpu.product": H100}
    assert values["node_names"] == ["gpu-a", "gpu-b"]


def test_too_many_replicas_are_refused_with_the_shortfall():
    with pytest.raises(PlacementError, match="at TP 2: room for 3 of 4 replicas"):
        plan_placement(
            "llama-3.1-70b",
            context_len=4096,
            concurrency=4,
            replicas=4,
            nodes=[gpu_node("gpu-a", free=6)],
            max_tp=2,
        )


def test_cpu_replicas_take_one_node_each():
    nodes = [cpu_node("cpu-1"), cpu_node("cpu-2")]
    with pytest.raises(PlacementError, match="2 nodes fit, 3 replicas requested"):
        plan_placement("llama-3.1-8b", context_len=1024, concurrency=1, replicas=3, nodes=nodes)
    two = plan_placement("llama-3.1-8b", context_len=1024, concurrency=1, replicas=2, nodes=nodes)
    assert sorted(two.best.replica_nodes) == ["cpu-1", "cpu-2"]


def test_identical_nodes_are_evaluated_alike_and_best_fit_picks_the_fullest_node():
    nodes = [gpu_node(f"gpu-{i:04d}", free=8) for i in range(500)]
    nodes += [gpu_node("gpu-busy", free=1)]
    nodes += [gpu_node(f"down-{i}", ready=False) for i in range(100)]
    result = plan_placement("llama-3.1-8b", context_len=4096, concurrency=4, nodes=nodes)
    assert result.best.node == "gpu-busy"
    assert len(result.refusals) == 100
    assert {r.reason for r in result.refusals} == {"not ready"}


# ----------------------------------------------------------------------------------------- runtime values


def test_runtime_values_for_a_gpu_placement():
    result = plan_placement(
        "llama-3.1-8b-instruct", context_len=2200, concurrency=16, nodes=[gpu_node("h100-1")]
    )
    values = runtime_values(result, served_model_name="chat")
    weights = estimate_memory("llama-3.1-8b-instruct", context_len=2200).weights_bytes
    assert values["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert values["device_type"] == "cuda"
    assert values["tensor_parallel_size"] == values["accelerator_count"] == 1
    assert values["accelerator_resource"] == "nvidia.com/gpu"
    assert values["node_selector"] == {"nvidia.com/gpu.product": H100}
    # Memory request = weights + 2 GiB buffer (model memory above 10 GiB), rounded up to whole GiB.
    assert values["memory_request"] == f"{-(-(weights + 2 * GIB) // GIB)}Gi" == values["memory_limit"]
    assert values["max_model_len"] == 2200
    assert values["max_num_seqs"] == 16
    assert values["gpu_memory_utilization"] == 0.9
    assert vllm_args(values, with_storage=True) == [
        "--model=/data/models-registry/meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name=chat",
        "--tensor-parallel-size=1",
        "--max-model-len=2200",
        "--gpu-memory-utilization=0.9",
        "--max-num-seqs=16",
        "--port=8000",
        "--dtype=bfloat16",
    ]
    assert values["cpu_kvcache_space_gib"] == 0
    assert all(not isinstance(v, dict) or k == "node_selector" for k, v in values.items())


def test_runtime_values_for_a_cpu_placement():
    result = plan_placement(
        "llama-3.1-8b",
        context_len=8192,
        concurrency=4,
        device_type="cpu",
        nodes=[cpu_node("cpu-1", cores=32)],
    )
    values = runtime_values(result)
    assert values["accelerator_resource"] == ""
    assert values["accelerator_count"] == 0
    assert values["cpu_request"] == "30"
    assert values["cpu_kvcache_space_gib"] == 4  # 128 KiB * 8192 tokens * 4 sequences
    assert values["gpu_memory_utilization"] == 0
    # The CPU pods have always been given vLLM's default utilization, which the CPU backend ignores (it sizes
    # its cache from VLLM_CPU_KVCACHE_SPACE); no accelerator flag beyond that.
    assert vllm_args(values, with_storage=False) == [
        "--model=meta-llama/Llama-3.1-8B",
        "--served-model-name=llama-3.1-8b",
        "--tensor-parallel-size=1",
        "--max-model-len=8192",
        "--gpu-memory-utilization=0.9",
        "--max-num-seqs=4",
        "--port=8000",
        "--dtype=bfloat16",
    ]
    assert values["node_selector"] == {"kubernetes.io/hostname": "cpu-1"}


# ----------------------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicas": 0}, "replicas must be a positive integer"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"max_tp": 3}, "max_tp must be a power of two"),
        ({"device_type": "tpu"}, "device_type must be auto or one of"),
        ({"context_len": 10**6}, "maximum context"),
        ({"nodes": [{"name": "n"}]}, "nodes must contain NodeCapacity rows"),
        ({"model": "no-such-model"}, "unknown model"),
        ({"model": {"name": "x", "params": 1e9}}, "missing required field"),
    ],
)
def test_invalid_plan_inputs_raise_clear_value_errors(kwargs, message):
    arguments = {
        "model": "llama-3.1-8b",
        "context_len": 4096,
        "concurrency": 1,
        "nodes": [gpu_node("g")],
        **kwargs,
    }
    model = arguments.pop("model")
    with pytest.raises(ValueError, match=message):
        plan_placement(model, **arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accelerator_type": "gpu"}, "accelerator_type must be one of cuda, rocm, hpu, cpu"),
        ({"device_count": 2, "free_devices": 4}, r"free_devices \(4\) exceeds device_count \(2\)"),
        ({"free_memory_bytes": -1}, "free_memory_bytes must be a non-negative integer"),
    ],
)
def test_invalid_nodes_are_refused_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NodeCapacity(name="n", **kwargs)


def test_a_model_given_as_a_dict_is_planned_like_a_catalog_entry():
    described = {
        "name": "acme/llama-like-8b",
        "params": 8_030_261_248,
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
    }
    nodes = [gpu_node("h100-1")]
    from_dict = plan_placement(described, context_len=4096, concurrency=8, nodes=nodes)
    from_catalog = plan_placement("llama-3.1-8b", context_len=4096, concurrency=8, nodes=nodes)
    assert from_dict.best.memory_per_device_bytes == from_catalog.best.memory_per_device_bytes
    assert runtime_values(from_dict)["model"] == "acme/llama-like-8b"
    assert from_dict.as_dict()["candidates"][0]["tensor_parallel_size"] == 1


def test_max_tp_is_named_when_it_stops_a_fit():
    with pytest.raises(PlacementError) as error:
        plan_placement("llama-3.1-70b", context_len=4096, concurrency=4, nodes=[gpu_node("h100-1")], max_tp=1)
    reason = refusal_for(error.value, "h100-1")
    assert "at TP 1" in reason
    assert reason.endswith("larger TP excluded by max_tp 1")


def test_refusals_read_in_part_or_whole_agree():
    nodes = [gpu_node(f"busy-{i}", free=0) for i in range(300)] + [
        cpu_node(f"small-{i}", free_gib=8) for i in range(5)
    ]
    with pytest.raises(PlacementError) as error:
        plan_placement("llama-3.1-8b", context_len=4096, concurrency=4, nodes=(n for n in nodes))
    refusals = error.value.refusals
    first = [str(r) for r in refusals[:3]]
    last = refusals[-1]
    payload = error.value.as_dict()
    assert len(payload["refusals"]) == 200
    assert payload["refusals_total"] == 305
    assert payload["refusals"][:3] == first == [f"busy-{i}: 0 free GPUs, needs 1" for i in range(3)]
    assert payload["detail"].startswith("no placement for llama-3.1-8b")
    assert re.fullmatch(r"small-4: 8 GiB < \d+(\.\d)? GiB needed", str(last))
    everything = error.value.refusal_messages
    assert len(everything) == 305
    assert everything[-1] == str(last)
    assert refusals[-1] == last
