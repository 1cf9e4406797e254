"""The built-in model catalog and models described in a request."""

import pytest

from deployments.catalog import CATALOG, EMBEDDING, get_model, list_models, model_from_dict, resolve_model


def test_catalog_answers_to_short_names_and_hugging_face_ids_case_insensitively():
    by_short = get_model("llama-3.1-8b-instruct")
    assert get_model("meta-llama/Llama-3.1-8B-Instruct") is by_short
    assert get_model("META-LLAMA/llama-3.1-8b-instruct") is by_short
    assert get_model("Llama-3.1-8B-Instruct") is by_short


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'gpt-5'.*llama-3.1-8b"):
        get_model("gpt-5")


def test_catalog_entries_are_self_consistent():
    for spec in CATALOG.values():
        assert spec.source.startswith("https://huggingface.co/"), spec.name
        assert spec.num_attention_heads % spec.num_kv_heads == 0, spec.name
        # head_dim is explicit for Gemma-2 (256 vs 3584/16 = 224); everywhere else it is hidden / heads.
        if spec.name != "gemma-2-9b-it":
            assert spec.head_dim * spec.num_attention_heads == spec.hidden_size, spec.name
        assert spec.active_params <= spec.params


def test_catalog_covers_the_popular_sizes():
    names = {spec.name for spec in list_models()}
    for expected in (
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "qwen2.5-7b-instruct",
        "qwen2.5-72b-instruct",
        "mistral-7b-v0.3",
        "mixtral-8x7b-instruct",
        "gemma-2-9b-it",
        "phi-3-mini-4k-instruct",
        "deepseek-r1-distill-llama-8b",
        "bge-large-en-v1.5",
    ):
        assert expected in names
    assert get_model("bge-large-en-v1.5").kind == EMBEDDING


def test_mixture_of_experts_keeps_total_and_active_parameters_apart():
    mixtral = get_model("mixtral-8x7b-instruct")
    assert mixtral.is_moe
    assert 46e9 < mixtral.params < 47.5e9
    assert 12.5e9 < mixtral.active_params < 13.5e9
    assert not get_model("llama-3.1-8b").is_moe


def test_llama_8b_embedding_parameters_match_its_untied_vocabulary():
    # 128256 tokens * 4096 hidden, input embedding and LM head: 1.05 B of the 8.03 B parameters.
    assert get_model("llama-3.1-8b").embedding_params == 2 * 128_256 * 4096
    assert get_model("gemma-2-9b-it").embedding_params == 256_000 * 3584  # tied


def test_model_from_dict_accepts_config_json_names_and_fills_defaults():
    spec = model_from_dict(
        {
            "name": "acme/tiny-7b",
            "params": "7.2B",
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "torch_dtype": "bf16",
        }
    )
    assert spec.params == 7_200_000_000
    assert spec.num_layers == 32
    assert spec.num_kv_heads == 8
    assert spec.head_dim == 128
    assert spec.default_dtype == "bfloat16"
    assert spec.hf_id == "acme/tiny-7b"
    assert resolve_model(spec) is spec


def test_model_from_dict_defaults_kv_heads_to_attention_heads():
    spec = model_from_dict(
        {
            "name": "m",
            "params": 1e9,
            "num_layers": 24,
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "max_context": 2048,
        }
    )
    assert spec.num_kv_heads == 16
    assert spec.head_dim == 128


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "m", "num_layers": 2}, r"missing required field\(s\) params, hidden_size"),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
                "colour": "blue",
            },
            r"unknown field\(s\) colour",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "num_kv_heads": 3,
                "max_context": 512,
            },
            r"multiple of num_kv_heads",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": -2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
            },
            r"num_layers must be a positive integer",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": "long",
            },
            r"max_context must be an integer",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 100,
                "num_attention_heads": 8,
                "max_context": 512,
            },
            r"head_dim is required",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
                "kind": "vision",
            },
            r"kind must be one of",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
                "torch_dtype": "int3",
            },
            r"default_dtype must be",
        ),
        (
            {
                "name": "m",
                "params": 1e9,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
                "active_params": 2e9,
            },
            r"active_params .* exceeds params",
        ),
        (
            {
                "name": "m",
                "params": 1000,
                "num_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 8,
                "max_context": 512,
            },
            r"total parameter count",
        ),
    ],
)
def test_model_from_dict_refuses_invalid_descriptions(data, message):
    with pytest.raises(ValueError, match=message):
        model_from_dict(data)


def test_model_must_be_a_name_or_an_object():
    with pytest.raises(ValueError, match="catalog name or an object"):
        resolve_model(42)  # type: ignore[arg-type]
