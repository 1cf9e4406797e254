"""Built-in catalog of popular open models, and validation of models given in a request.

Placement needs only a model's shape, not its weights: parameter count (memory for the weights), layers, KV
heads and head size (memory for the KV cache), attention heads (which tensor-parallel sizes vLLM accepts),
vocabulary and embedding tying (the part of the weights that quantized checkpoints keep in 16 bits) and the
maximum context. `ModelSpec` holds exactly that.

Every catalog entry copies its figures from the model's Hugging Face `config.json` (field names in the
comment of each entry's `source`), and the parameter count from the safetensors metadata shown on the model
page. Models absent from the catalog can be described in the request as a dict; `model_from_dict` accepts our
field names or the matching `config.json` names and refuses anything unclear with a ValueError that names the
field.

Pure Python on purpose: placement runs in API requests and benchmarks, so no Django import here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

GENERATION = "generation"
EMBEDDING = "embedding"
MODEL_KINDS = (GENERATION, EMBEDDING)

# Serving dtypes vLLM accepts for weights/activations; the aliases map to one canonical spelling.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The shape of a model as far as memory and tensor parallelism are concerned.

    `params` is the total parameter count (for a mixture-of-experts model every expert is resident, so memory
    follows the total); `active_params` is what one token passes through (compute, not memory).
    `max_context` is the longest sequence the model supports (`max_position_embeddings`).
    `default_dtype` is what vLLM serves with `--dtype auto`.
    """

    name: str
    hf_id: str
    params: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    default_dtype: str = "bfloat16"
    kind: str = GENERATION
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    active_params: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        _check_spec(self)
        if not self.active_params:
            object.__setattr__(self, "active_params", self.params)

    @property
    def is_moe(self) -> bool:
        return self.active_params < self.params

    @property
    def embedding_params(self) -> int:
        """Parameters of the input embedding and the LM head (once when tied).

        Quantized checkpoints (AWQ, GPTQ, FP8) keep these in 16 bits, which matters for small models: on
        Llama-3.1-8B they are 1.05 B of the 8.03 B parameters.
        """
        if not self.vocab_size:
            return 0
        per_matrix = self.vocab_size * self.hidden_size
        return per_matrix if (self.tie_word_embeddings or self.kind == EMBEDDING) else 2 * per_matrix

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_spec(spec: ModelSpec) -> None:
    """Raise ValueError naming the first inconsistent field (shared by catalog entries and request dicts)."""
    label = spec.name or "model"
    for name in (
        "params",
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
        "max_context",
    ):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label}: {name} must be a positive integer, got {value!r}")
    for name in ("vocab_size", "active_params"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label}: {name} must be a non-negative integer, got {value!r}")
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError("model: name must be a non-empty string")
    if spec.params < 1_000_000:
        raise ValueError(f"{label}: params must be the total parameter count (≥ 1M), got {spec.params}")
    if spec.active_params > spec.params:
        raise ValueError(f"{label}: active_params ({spec.active_params}) exceeds params ({spec.params})")
    if spec.num_attention_heads % spec.num_kv_heads:
        raise ValueError(
            f"{label}: num_attention_heads ({spec.num_attention_heads}) must be a multiple of num_kv_heads "
            f"({spec.num_kv_heads})"
        )
    if spec.default_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(
            f"{label}: default_dtype must be float32, bfloat16 or float16, got {spec.default_dtype!r}"
        )
    if spec.kind not in MODEL_KINDS:
        raise ValueError(f"{label}: kind must be one of {', '.join(MODEL_KINDS)}, got {spec.kind!r}")


def _hf(repo: str, note: str = "") -> str:
    base = f"https://huggingface.co/{repo}/blob/main/config.json"
    return f"{base} ({note})" if note else base


_LLAMA31_8B = {
    "params": 8_030_261_248,
    "num_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "max_context": 131_072,
    "vocab_size": 128_256,
}
_LLAMA31_70B = {
    "params": 70_553_706_496,
    "num_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_kv_heads": 8,
    "head_dim": 128,
    "max_context": 131_072,
    "vocab_size": 128_256,
}

# Figures from config.json: num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads,
# head_dim (or hidden_size / num_attention_heads), max_position_embeddings, vocab_size, tie_word_embeddings,
# torch_dtype; params from the safetensors metadata on the model page.
_ENTRIES: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="llama-3.1-8b",
        hf_id="meta-llama/Llama-3.1-8B",
        source=_hf("meta-llama/Llama-3.1-8B"),
        **_LLAMA31_8B,
    ),
    ModelSpec(
        name="llama-3.1-8b-instruct",
        hf_id="meta-llama/Llama-3.1-8B-Instruct",
        source=_hf("meta-llama/Llama-3.1-8B-Instruct"),
        **_LLAMA31_8B,
    ),
    ModelSpec(
        name="deepseek-r1-distill-llama-8b",
        hf_id="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        source=_hf("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "Llama-3.1-8B architecture"),
        **_LLAMA31_8B,
    ),
    ModelSpec(
        name="llama-3.1-70b",
        hf_id="meta-llama/Llama-3.1-70B",
        source=_hf("meta-llama/Llama-3.1-70B"),
        **_LLAMA31_70B,
    ),
    ModelSpec(
        name="llama-3.1-70b-instruct",
        hf_id="meta-llama/Llama-3.1-70B-Instruct",
        source=_hf("meta-llama/Llama-3.1-70B-Instruct"),
        **_LLAMA31_70B,
    ),
    ModelSpec(
        name="llama-3.1-405b",
        hf_id="meta-llama/Llama-3.1-405B",
        params=405_853_388_800,
        num_layers=126,
        hidden_size=16384,
        num_attention_heads=128,
        num_kv_heads=8,
        head_dim=128,
        max_context=131_072,
        vocab_size=128_256,
        source=_hf("meta-llama/Llama-3.1-405B"),
    ),
    ModelSpec(
        name="qwen2.5-7b-instruct",
        hf_id="Qwen/Qwen2.5-7B-Instruct",
        params=7_615_616_512,
        num_layers=28,
        hidden_size=3584,
        num_attention_heads=28,
        num_kv_heads=4,
        head_dim=128,
        max_context=32_768,
        vocab_size=152_064,
        source=_hf("Qwen/Qwen2.5-7B-Instruct", "32K native; 128K needs YaRN"),
    ),
    ModelSpec(
        name="qwen2.5-72b-instruct",
        hf_id="Qwen/Qwen2.5-72B-Instruct",
        params=72_706_203_648,
        num_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        max_context=32_768,
        vocab_size=152_064,
        source=_hf("Qwen/Qwen2.5-72B-Instruct", "32K native; 128K needs YaRN"),
    ),
    ModelSpec(
        name="mistral-7b-v0.3",
        hf_id="mistralai/Mistral-7B-v0.3",
        params=7_248_023_552,
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_context=32_768,
        vocab_size=32_768,
        source=_hf("mistralai/Mistral-7B-v0.3"),
    ),
    ModelSpec(
        name="mixtral-8x7b-instruct",
        hf_id="mistralai/Mixtral-8x7B-Instruct-v0.1",
        params=46_702_792_704,
        active_params=12_879_925_248,
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_context=32_768,
        vocab_size=32_000,
        source=_hf("mistralai/Mixtral-8x7B-Instruct-v0.1", "8 experts, 2 per token"),
    ),
    ModelSpec(
        name="gemma-2-9b-it",
        hf_id="google/gemma-2-9b-it",
        params=9_241_705_984,
        num_layers=42,
        hidden_size=3584,
        num_attention_heads=16,
        num_kv_heads=8,
        head_dim=256,
        max_context=8192,
        vocab_size=256_000,
        tie_word_embeddings=True,
        source=_hf("google/gemma-2-9b-it", "head_dim 256 is explicit; vLLM serves it in bfloat16"),
    ),
    ModelSpec(
        name="phi-3-mini-4k-instruct",
        hf_id="microsoft/Phi-3-mini-4k-instruct",
        params=3_821_079_552,
        num_layers=32,
        hidden_size=3072,
        num_attention_heads=32,
        num_kv_heads=32,
        head_dim=96,
        max_context=4096,
        vocab_size=32_064,
        source=_hf("microsoft/Phi-3-mini-4k-instruct"),
    ),
    ModelSpec(
        name="bge-large-en-v1.5",
        hf_id="BAAI/bge-large-en-v1.5",
        params=335_141_888,
        num_layers=24,
        hidden_size=1024,
        num_attention_heads=16,
        num_kv_heads=16,
        head_dim=64,
        max_context=512,
        vocab_size=30_522,
        default_dtype="float16",
        kind=EMBEDDING,
        source=_hf("BAAI/bge-large-en-v1.5", "BERT-large encoder; float32 checkpoint served in float16"),
    ),
)

CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in _ENTRIES}

# Lookup by short name or Hugging Face id, case-insensitive; "-instruct" short names also answer to the
# id's last path component (e.g. "Llama-3.1-8B-Instruct").
_INDEX: dict[str, ModelSpec] = {}
for _spec in _ENTRIES:
    for _key in (_spec.name, _spec.hf_id, _spec.hf_id.split("/", 1)[1]):
        _INDEX.setdefault(_key.lower(), _spec)


def list_models() -> list[ModelSpec]:
    """Catalog entries in a stable order (smallest first), for API listings and the admin."""
    return sorted(_ENTRIES, key=lambda s: (s.kind != GENERATION, s.params, s.name))


def get_model(name: str) -> ModelSpec:
    """Catalog entry by short name or Hugging Face id (case-insensitive); ValueError names the choices."""
    spec = _INDEX.get(str(name).strip().lower())
    if spec is None:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(
            f"unknown model {name!r}; known models: {known} (or describe the model as an object)"
        )
    return spec


# config.json names accepted in a request dict, mapped to our field names.
_FIELD_ALIASES: dict[str, str] = {
    "num_hidden_layers": "num_layers",
    "n_layer": "num_layers",
    "num_key_value_heads": "num_kv_heads",
    "max_position_embeddings": "max_context",
    "max_model_len": "max_context",
    "torch_dtype": "default_dtype",
    "dtype": "default_dtype",
    "parameters": "params",
    "num_parameters": "params",
    "id": "hf_id",
    "model_id": "hf_id",
}
_FIELD_NAMES = frozenset(f.name for f in fields(ModelSpec))
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SIZE_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def _parse_count(field_name: str, value: object) -> int:
    """Accept 8030261248, 8.03e9 or "8.03B" for parameter counts; integers elsewhere."""
    if isinstance(value, bool):
        raise ValueError(f"model: {field_name} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if field_name in ("params", "active_params"):
        if isinstance(value, float) and math.isfinite(value):
            return round(value)
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            if match:
                return round(float(match.group(1)) * _SIZE_SCALE[match.group(2).lower()])
    raise ValueError(f"model: {field_name} must be an integer, got {value!r}")


def model_from_dict(data: Mapping) -> ModelSpec:
    """Build a ModelSpec from a request object; ValueError names the missing, unknown or invalid field.

    Required: name (or hf_id), params, num_layers, hidden_size, num_attention_heads, max_context.
    Defaults: num_kv_heads = num_attention_heads (plain multi-head attention), head_dim = hidden_size /
    num_attention_heads, default_dtype bfloat16, kind generation.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"model must be a catalog name or an object, got {type(data).__name__}")
    values: dict[str, object] = {}
    unknown = []
    for key, value in data.items():
        name = _FIELD_ALIASES.get(key, key)
        if name not in _FIELD_NAMES:
            unknown.append(str(key))
            continue
        if name in values:
            raise ValueError(f"model: {name} given twice (as {key!r} and another alias)")
        values[name] = value
    if unknown:
        raise ValueError(
            f"model: unknown field(s) {', '.join(sorted(unknown))}; accepted: "
            f"{', '.join(sorted(_FIELD_NAMES))}"
        )

    if not values.get("name") and values.get("hf_id"):
        values["name"] = str(values["hf_id"])
    if not values.get("hf_id") and values.get("name"):
        values["hf_id"] = str(values["name"])
    missing = [
        f
        for f in ("name", "params", "num_layers", "hidden_size", "num_attention_heads", "max_context")
        if values.get(f) in (None, "")
    ]
    if missing:
        raise ValueError(f"model: missing required field(s) {', '.join(missing)}")
    for key in ("name", "hf_id", "source"):
        if key in values and not isinstance(values[key], str):
            raise ValueError(f"model: {key} must be a string, got {values[key]!r}")

    for key in (
        "params",
        "active_params",
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
        "max_context",
        "vocab_size",
    ):
        if values.get(key) is not None:
            values[key] = _parse_count(key, values[key])
    heads = values["num_attention_heads"]
    values.setdefault("num_kv_heads", heads)
    if values.get("head_dim") is None:
        hidden = values["hidden_size"]
        if isinstance(heads, int) and heads > 0 and hidden % heads:  # type: ignore[operator]
            raise ValueError(
                f"model: head_dim is required when hidden_size ({hidden}) is not a multiple of "
                f"num_attention_heads ({heads})"
            )
        values["head_dim"] = hidden // heads if heads else 0  # type: ignore[operator]
    if "default_dtype" in values:
        raw = values["default_dtype"]
        dtype = DTYPE_ALIASES.get(str(raw).lower())
        if dtype is None:
            raise ValueError(f"model: default_dtype must be float32, bfloat16 or float16, got {raw!r}")
        values["default_dtype"] = dtype
    if "tie_word_embeddings" in values and not isinstance(values["tie_word_embeddings"], bool):
        raise ValueError("model: tie_word_embeddings must be true or false")
    for key in ("vocab_size", "active_params"):
        if values.get(key) is None:
            values.pop(key, None)
    return ModelSpec(**values)  # type: ignore[arg-type]


def resolve_model(model: str | Mapping | ModelSpec) -> ModelSpec:
    """A catalog name, a request dict or a ModelSpec → ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return get_model(model)
    return model_from_dict(model)
