"""Memory estimates checked against published figures."""

import pytest

from deployments.catalog import get_model
from deployments.placement import GIB, KIB, estimate_memory, max_model_len_for, valid_tensor_parallel_sizes

GB = 10**9


def test_fp16_weights_take_two_bytes_per_parameter():
    small = estimate_memory("llama-3.1-8b", dtype="float16", context_len=1024)
    large = estimate_memory("llama-3.1-70b", dtype="bfloat16", context_len=1024)
    assert small.weights_bytes == pytest.approx(16 * GB, rel=0.01)  # 8.03 B params
    assert large.weights_bytes == pytest.approx(141 * GB, rel=0.01)  # 70.6 B params
    assert small.bytes_per_param == 2


def test_float32_doubles_the_weights():
    half = estimate_memory("phi-3-mini-4k-instruct", dtype="bf16", context_len=1024)
    full = estimate_memory("phi-3-mini-4k-instruct", dtype="float32", context_len=1024)
    assert full.weights_bytes == 2 * half.weights_bytes


def test_llama_8b_kv_cache_is_128_kib_per_token():
    estimate = estimate_memory("llama-3.1-8b", context_len=8192, concurrency=4)
    assert estimate.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * KIB
    assert estimate.kv_cache_bytes == 128 * KIB * 8192 * 4  # 4 GiB


def test_kv_cache_grows_linearly_with_context_and_concurrency():
    one = estimate_memory("qwen2.5-7b-instruct", context_len=4096, concurrency=1).kv_cache_bytes
    assert estimate_memory("qwen2.5-7b-instruct", context_len=8192, concurrency=1).kv_cache_bytes == 2 * one
    assert estimate_memory("qwen2.5-7b-instruct", context_len=4096, concurrency=8).kv_cache_bytes == 8 * one


@pytest.mark.parametrize(
    ("model", "quantization", "published_gb"),
    [
        # Checkpoint sizes on the Hugging Face hub; quantized files keep embeddings and LM head in 16 bits.
        ("llama-3.1-8b", "awq", 5.73),  # hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4
        ("llama-3.1-70b", "fp8", 72.7),  # meta-llama/Llama-3.1-70B-Instruct-FP8 (neuralmagic)
        ("llama-3.1-70b", "awq", 39.8),  # hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4
        ("llama-3.1-405b", "fp8", 410),  # meta-llama/Llama-3.1-405B-Instruct-FP8
    ],
)
def test_quantized_weights_match_published_checkpoint_sizes(model, quantization, published_gb):
    estimate = estimate_memory(model, quantization=quantization, context_len=1024)
    assert estimate.weights_bytes == pytest.approx(published_gb * GB, rel=0.03)


def test_mixture_of_experts_needs_memory_for_every_expert():
    mixtral = estimate_memory("mixtral-8x7b-instruct", context_len=1024)
    assert mixtral.weights_bytes == pytest.approx(2 * 46.7 * GB, rel=0.01)


def test_embedding_models_keep_no_kv_cache():
    estimate = estimate_memory("bge-large-en-v1.5", context_len=512, concurrency=64)
    assert estimate.kv_cache_bytes == 0
    assert estimate.weights_bytes == pytest.approx(0.67 * GB, rel=0.01)  # float16 serving of 335 M params


def test_tensor_parallelism_splits_weights_and_cache_but_repeats_the_fixed_overhead():
    tp1 = estimate_memory("llama-3.1-70b", context_len=8192, concurrency=8, tensor_parallel_size=1)
    tp4 = estimate_memory("llama-3.1-70b", context_len=8192, concurrency=8, tensor_parallel_size=4)
    assert tp4.weights_bytes == tp1.weights_bytes
    assert tp4.per_device_bytes < tp1.per_device_bytes / 3
    assert tp4.overhead_bytes > tp1.overhead_bytes  # fixed overhead counted on each of the 4 devices
    assert tp4.total_bytes == tp4.weights_bytes + tp4.kv_cache_bytes + tp4.overhead_bytes
    assert tp4.per_device_bytes * 4 == tp4.total_bytes


def test_cpu_overhead_is_documented_separately_from_gpu_overhead():
    gpu = estimate_memory("llama-3.1-8b", context_len=4096, device_type="cuda")
    cpu = estimate_memory("llama-3.1-8b", context_len=4096, device_type="cpu")
    assert cpu.overhead_bytes > gpu.overhead_bytes
    assert cpu.as_dict()["weights_gib"] == pytest.approx(16.06 * GB / GIB, abs=0.01)


def test_auto_dtype_uses_the_model_default():
    assert estimate_memory("llama-3.1-8b", dtype="auto", context_len=128).dtype == "bfloat16"
    assert estimate_memory("bge-large-en-v1.5", dtype=None, context_len=128).dtype == "float16"


def test_tensor_parallel_sizes_divide_attention_and_kv_heads():
    assert valid_tensor_parallel_sizes(get_model("llama-3.1-70b"), 8) == [1, 2, 4, 8]
    # Qwen2.5-7B: 28 attention heads, 4 KV heads -> 8 divides neither.
    assert valid_tensor_parallel_sizes(get_model("qwen2.5-7b-instruct"), 8) == [1, 2, 4]
    assert valid_tensor_parallel_sizes(get_model("llama-3.1-405b")) == [1, 2, 4, 8]


def test_max_model_len_adds_ten_percent_and_caps_at_the_model_context():
    assert max_model_len_for("llama-3.1-8b", 1000, 1000) == 2200
    assert max_model_len_for("gemma-2-9b-it", 8000, 2000) == 8192
    with pytest.raises(ValueError, match="output_tokens must be a positive integer"):
        max_model_len_for("llama-3.1-8b", 10, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float8"}, "dtype must be auto, float32, bfloat16 or float16"),
        ({"quantization": "q3_k_m"}, "quantization must be none or one of"),
        ({"context_len": 0}, "context_len must be a positive integer"),
        ({"context_len": 200_000}, "exceeds llama-3.1-8b's maximum context of 131072"),
        ({"concurrency": 0}, "concurrency must be a positive integer"),
        ({"device_type": "tpu"}, "device_type must be one of"),
        ({"tensor_parallel_size": True}, "tensor_parallel_size must be a positive integer"),
    ],
)
def test_invalid_estimate_inputs_are_explained(kwargs, message):
    arguments = {"context_len": 4096, **kwargs}
    with pytest.raises(ValueError, match=message):
        estimate_memory("llama-3.1-8b", **arguments)
