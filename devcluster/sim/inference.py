"""An OpenAI-compatible inference simulator (in the spirit of llm-d-inference-sim).

Serves what a vLLM pod serves: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (SSE streaming with
`stream: true`; a final usage chunk when `stream_options.include_usage`), `/v1/embeddings`, `/health`,
`/version` and `/metrics` (Prometheus text).  Inside devcluster one `InferenceServer` exists per Running
serving pod and is reached through a LoadBalancer address or the API server's service proxy; on its own it
runs with `python -m devcluster.sim.inference --port 8000 --model NAME [--ttft-ms X --itl-ms Y ...]`; with
`--workers N` it forks N serving processes sharing the port (SO_REUSEPORT: the kernel spreads connections), so a
load test of a thousand streams is not limited by one simulator event loop.  Each worker then has its own
counters, `--max-num-seqs` slots and `/metrics` (a scrape sees one worker's).

Latency model (all times in milliseconds)
-----------------------------------------
    P   = model parameters in billions, parsed from the model name ("Llama-3.1-8B" -> 8, "opt-125m" -> 0.125,
          "Mixtral-8x7B" -> 56; 7 when the name carries no size)
    b   = bytes per parameter: 2 (bf16/fp16), 4 (--dtype float32), 1 (fp8), 0.5 (awq/gptq/int4)
    TP  = --tensor-parallel-size (1 on CPU)
    F   = dense BF16 TFLOPS of one device, B = memory bandwidth of one device in GB/s, from the node's
          hardware description (H100 989/3350, A100 312/2039, L4 121/300, MI300X 1307/5300, Gaudi2 432/2460,
          Xeon 8480+ 120/614 for the whole node)
    ITL  = 1.0 + 1000 * P * b / (TP * B * 0.6)                     decode reads all weights once per token at 60 %
                                                                   of peak bandwidth
    TTFT = 10.0 + prompt_tokens * 2 * P * 1e9 / (TP * F * 1e12 * 0.4) * 1000 + ITL
                                                                   prefill at 40 % of peak FLOPS, then the
                                                                   first decode step
Overrides, most specific first: the pod's env DEVCLUSTER_TTFT_MS / DEVCLUSTER_ITL_MS (TTFT then becomes a
constant), the CLI / SimConfig `ttft_ms` / `itl_ms`, then the formula.  Latency does not grow with load:
a request only waits when more than `--max-num-seqs` (default 256) requests are in flight, as vLLM queues.

Metrics under load (the signals an autoscaler reads, with vLLM's names and meanings)
-----------------------------------------------------------------------------------
    vllm:num_requests_waiting      requests queued for a slot (in flight beyond --max-num-seqs)
    vllm:num_requests_running      requests holding a slot
    vllm:time_to_first_token_seconds   histogram, from the request's arrival (queueing included, as vLLM
                                   measures it) to its first token
    vllm:kv_cache_usage_perc       fraction (0-1) of the KV cache the running requests hold: their prompt tokens
    vllm:gpu_cache_usage_perc      from admission plus one per generated token (a non-streamed request holds its
                                   whole output from admission), over a capacity of DEVCLUSTER_KV_CACHE_TOKENS
                                   (default --max-num-seqs x 1024 tokens); both names, as vLLM 0.10-0.11 exports
                                   the old one beside the new

Timing is scheduled against absolute deadlines on the loop clock (token i is due at
start + TTFT + i * ITL), so sleeps never accumulate drift; each SSE chunk carries exactly one token.

Determinism
-----------
- prompt tokens = number of words and punctuation marks (regex `\\w+|[^\\w\\s]`) of the prompt; for chat the
  text is the messages rendered as "role: content" lines; a prompt given as token ids counts its ids.
- output tokens = exactly `max_tokens` (`max_completion_tokens` for chat; default 16), finish_reason "length".
- DEVCLUSTER_FAIL_RATE=r fails request n (counting generation requests from 1) when
  floor(n * r) > floor((n - 1) * r): for 0.1 every 10th request answers 500 with an OpenAI error body.
- DEVCLUSTER_STALL_AFTER_TOKENS=k stops a stream after k tokens and holds the connection open (at most
  `STALL_LIMIT_S`) without [DONE].
- embeddings are unit vectors seeded from sha256(model, input): the same input gives the same vector.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import shlex
import struct
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from aiohttp import web

from devcluster.sim.hardware import device_perf

log = logging.getLogger(__name__)

VLLM_VERSION = "0.11.0"
DEFAULT_MODEL = "facebook/opt-125m"
DEFAULT_MAX_TOKENS = 16
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_MAX_NUM_SEQS = 256
EMBEDDING_DIM = 384
STALL_LIMIT_S = 300.0
KV_TOKENS_PER_SEQ = 1024  # default KV capacity per --max-num-seqs slot (see the module docstring)
ITL_BASE_MS = 1.0
TTFT_BASE_MS = 10.0
MBU = 0.6
MFU = 0.4

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_VOCAB = (
    "the",
    "model",
    "answers",
    "with",
    "simulated",
    "tokens",
    "from",
    "devcluster",
    "on",
    "a",
    "local",
    "cluster",
    "and",
    "each",
    "word",
    "is",
    "one",
    "token",
    ".",
    ",",
)
_ACCEL_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi")


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def model_params_b(model: str) -> float:
    """Parameter count in billions guessed from a model name (see the module docstring)."""
    name = model.rsplit("/", 1)[-1]
    m = re.search(r"(\d+)x(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    if m:
        return float(m.group(1)) * float(m.group(2))
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    if m:
        return float(m.group(1))
    m = re.search(r"(\d+(?:\.\d+)?)[mM](?![a-zA-Z])", name)
    if m:
        return float(m.group(1)) / 1000
    return 7.0


def bytes_per_param(dtype: str | None, quantization: str | None) -> float:
    q = (quantization or "").lower()
    if q in ("awq", "gptq", "bitsandbytes", "gguf", "awq_marlin", "gptq_marlin") or "int4" in q:
        return 0.5
    if "fp8" in q or q in ("int8", "w8a8"):
        return 1.0
    if (dtype or "").lower() in ("float32", "fp32"):
        return 4.0
    return 2.0


@dataclass
class Latency:
    ttft_fixed_ms: float | None = None  # constant TTFT (override) instead of the formula
    itl_ms: float = 10.0
    prefill_ms_per_token: float = 0.0

    def ttft_ms(self, prompt_tokens: int) -> float:
        if self.ttft_fixed_ms is not None:
            return self.ttft_fixed_ms
        return TTFT_BASE_MS + prompt_tokens * self.prefill_ms_per_token + self.itl_ms

    @classmethod
    def model(
        cls,
        params_b: float,
        bpp: float,
        perf: dict,
        tp: int,
        ttft_ms: float | None = None,
        itl_ms: float | None = None,
    ) -> Latency:
        tp = max(1, tp)
        bandwidth = float(perf.get("bandwidth_gbs") or 100.0)
        tflops = float(perf.get("tflops") or 2.0)
        itl = ITL_BASE_MS + 1000.0 * params_b * bpp / (tp * bandwidth * MBU)
        prefill = 2.0 * params_b * 1e9 / (tp * tflops * 1e12 * MFU) * 1000.0
        return cls(
            ttft_fixed_ms=ttft_ms, itl_ms=itl if itl_ms is None else itl_ms, prefill_ms_per_token=prefill
        )


def _env_float(env: dict, key: str) -> float | None:
    raw = env.get(key)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def parse_engine_args(argv: list[str]) -> dict[str, Any]:
    """The vLLM engine flags the simulator honours, from a container's command + args."""
    words: list[str] = []
    for w in argv:
        words.extend(shlex.split(w) if " " in w.strip() else [w])
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "serve" and i + 1 < len(words) and not words[i + 1].startswith("-"):
            out.setdefault("model", words[i + 1])
            i += 2
            continue
        if w.startswith("--") or w in ("-tp", "-q"):
            flag, eq, val = w.partition("=")
            vals: list[str] = [val] if eq else []
            if not eq:
                while i + 1 < len(words) and not words[i + 1].startswith("-"):
                    vals.append(words[i + 1])
                    i += 1
            key = {"-tp": "tensor-parallel-size", "-q": "quantization"}.get(flag, flag.lstrip("-"))
            out[key] = vals if key == "served-model-name" else (vals[0] if vals else "true")
        i += 1
    return out


@dataclass
class Counters:
    requests: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    success: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0  # KV cache held by the running requests, in tokens
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))


TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


@dataclass
class Histogram:
    """Server-side latency as it left the engine (the client's view adds its own network and loop delays)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        counts = self.counts or [0] * len(self.bounds)
        out = [f'{name}_bucket{{{labels},le="{b}"}} {c}' for b, c in zip(self.bounds, counts, strict=True)]
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


class InferenceServer:
    """One simulated serving engine (see the module docstring for behaviour and formulas)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        served_names: list[str] | None = None,
        latency: Latency | None = None,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        fail_rate: float = 0.0,
        stall_after_tokens: int | None = None,
        port: int = 8000,
        embedding_dim: int = EMBEDDING_DIM,
        device: str = "cpu",
        kv_cache_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.served_names = served_names or [model]
        self.latency = latency or Latency()
        self.max_model_len = max_model_len
        self.max_num_seqs = max(1, max_num_seqs)
        self.kv_cache_tokens = max(1, kv_cache_tokens or self.max_num_seqs * KV_TOKENS_PER_SEQ)
        self.fail_rate = Fraction(str(min(1.0, max(0.0, fail_rate))))
        self.stall_after_tokens = stall_after_tokens
        self.port = port
        self.embedding_dim = embedding_dim
        self.device = device
        self.created = int(time.time())
        self.counters = Counters()
        self._seq = 0
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_pod(cls, pod: dict, container: dict, hw: dict | None, config: Any = None) -> InferenceServer:
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or () if "name" in e}
        args = parse_engine_args([*(container.get("command") or []), *(container.get("args") or [])])
        res = container.get("resources") or {}
        wants = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        accelerated = any(str(wants.get(r, "0")) not in ("0", "") for r in _ACCEL_RESOURCES) or any(
            k.startswith("nvidia.com/mig-") for k in wants
        )
        port = int(
            args.get("port")
            or next(
                (p.get("containerPort") for p in container.get("ports") or () if p.get("containerPort")), 8000
            )
        )
        return cls.from_settings(
            args, env, device_perf(hw, accelerated), config, port, "accelerator" if accelerated else "cpu"
        )

    @classmethod
    def from_settings(
        cls, args: dict, env: dict, perf: dict, config: Any = None, port: int = 8000, device: str = "cpu"
    ) -> InferenceServer:
        model = str(args.get("model") or env.get("MODEL_NAME") or DEFAULT_MODEL)
        names = args.get("served-model-name") or [model]
        tp = int(args.get("tensor-parallel-size") or 1) if device != "cpu" else 1
        params = _env_float(env, "DEVCLUSTER_MODEL_PARAMS_B") or model_params_b(model)
        ttft = _env_float(env, "DEVCLUSTER_TTFT_MS")
        itl = _env_float(env, "DEVCLUSTER_ITL_MS")
        if ttft is None and config is not None:
            ttft = getattr(config, "ttft_ms", None)
        if itl is None and config is not None:
            itl = getattr(config, "itl_ms", None)
        fail = _env_float(env, "DEVCLUSTER_FAIL_RATE")
        if fail is None and config is not None:
            fail = getattr(config, "fail_rate", None)
        stall = _env_float(env, "DEVCLUSTER_STALL_AFTER_TOKENS")
        if stall is None and config is not None:
            stall = getattr(config, "stall_after_tokens", None)
        latency = Latency.model(
            params, bytes_per_param(args.get("dtype"), args.get("quantization")), perf, tp, ttft, itl
        )
        return cls(
            model=model,
            served_names=list(names),
            latency=latency,
            max_model_len=int(args.get("max-model-len") or DEFAULT_MAX_MODEL_LEN),
            max_num_seqs=int(args.get("max-num-seqs") or DEFAULT_MAX_NUM_SEQS),
            fail_rate=fail or 0.0,
            stall_after_tokens=int(stall) if stall is not None else None,
            port=port,
            embedding_dim=int(_env_float(env, "DEVCLUSTER_EMBEDDING_DIM") or EMBEDDING_DIM),
            device=device,
            kv_cache_tokens=int(
                _env_float(env, "DEVCLUSTER_KV_CACHE_TOKENS") or getattr(config, "kv_cache_tokens", None) or 0
            )
            or None,
        )

    def startup_log(self) -> list[str]:
        return [
            f"INFO vLLM API server version {VLLM_VERSION} (devcluster simulator)",
            f"INFO model={self.model} served_model_name={self.served_names} max_model_len={self.max_model_len}",
            f"INFO simulated latency: ITL {self.latency.itl_ms:.2f} ms, TTFT(128 tokens) "
            f"{self.latency.ttft_ms(128):.2f} ms on {self.device}",
            f"INFO Uvicorn running on http://0.0.0.0:{self.port} (Press CTRL+C to quit)",
        ]

    def close(self) -> None:
        self._closed = True

    # ------------------------------------------------------------------ dispatch
    async def handle(self, request: web.BaseRequest, path: str | None = None) -> web.StreamResponse:
        """Answer `request` as the engine would for `path` (defaults to the request's own path)."""
        route = "/" + (path if path is not None else request.path).strip("/")
        method = request.method
        self.counters.requests[route] = self.counters.requests.get(route, 0) + 1
        if route in ("/health", "/ping") and method in ("GET", "POST", "HEAD"):
            return web.Response(status=200)
        if route == "/version" and method == "GET":
            return web.json_response({"version": VLLM_VERSION})
        if route == "/metrics" and method == "GET":
            return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")
        if route == "/v1/models" and method == "GET":
            return web.json_response(
                {"object": "list", "data": [self._model_card(n) for n in self.served_names]}
            )
        if route in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            if method != "POST":
                return _error(405, "Method Not Allowed", "MethodNotAllowed")
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                return _error(400, "Invalid JSON body", "BadRequestError")
            if not isinstance(body, dict):
                return _error(400, "Request body must be a JSON object", "BadRequestError")
            return await self._generate(request, route, body)
        return _error(404, f"Not Found: {route}", "NotFoundError")

    def _model_card(self, name: str) -> dict:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_DNS, name).hex}",
                    "object": "model_permission",
                    "created": self.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    def _should_fail(self) -> bool:
        self._seq += 1
        n = self._seq
        return self.fail_rate > 0 and math.floor(n * self.fail_rate) > math.floor((n - 1) * self.fail_rate)

    # ------------------------------------------------------------------ generation
    async def _generate(self, request: web.BaseRequest, route: str, body: dict) -> web.StreamResponse:
        model = body.get("model") or self.served_names[0]
        if model not in self.served_names:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if self._should_fail():
            self.counters.errors += 1
            return _error(500, "Simulated engine failure (DEVCLUSTER_FAIL_RATE)", "InternalServerError")
        if route == "/v1/embeddings":
            return await self._embeddings(body, model)
        chat = route == "/v1/chat/completions"
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "messages must be a non-empty list", "BadRequestError")
            prompt_tokens = max(
                1,
                count_tokens(
                    "\n".join(
                        f"{m.get('role', '')}: {_content_text(m.get('content'))}"
                        for m in messages
                        if isinstance(m, dict)
                    )
                ),
            )
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        else:
            prompt = body.get("prompt")
            if prompt is None:
                return _error(400, "prompt is required", "BadRequestError")
            prompt_tokens = max(1, _prompt_tokens(prompt))
            max_tokens = body.get("max_tokens")
        try:
            n_out = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
        except (TypeError, ValueError):
            return _error(400, "max_tokens must be an integer", "BadRequestError")
        if n_out < 1:
            return _error(400, "max_tokens must be at least 1", "BadRequestError")
        if prompt_tokens + n_out > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + n_out} tokens ({prompt_tokens} in the messages, {n_out} in "
                "the completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_num_seqs)
        arrival = asyncio.get_running_loop().time()
        self.counters.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.counters.waiting -= 1
        self.counters.running += 1
        self.counters.prompt_tokens += prompt_tokens
        # KV cache: the prompt from admission, then one token per generated token (the whole output at once for
        # a non-streamed request); all of it is freed when the request ends.
        held = [prompt_tokens if stream else prompt_tokens + n_out]
        self.counters.kv_tokens += held[0]
        try:
            if stream:
                return await self._stream(
                    request, chat, model, prompt_tokens, n_out, include_usage, arrival, held
                )
            return await self._complete(chat, model, prompt_tokens, n_out)
        finally:
            self.counters.kv_tokens -= held[0]
            self.counters.running -= 1
            self._slots.release()

    async def _complete(self, chat: bool, model: str, prompt_tokens: int, n_out: int) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ttft = self.latency.ttft_ms(prompt_tokens) / 1000.0
        await _sleep_until(loop, start + ttft + (n_out - 1) * self.latency.itl_ms / 1000.0)
        text = "".join(_token(i) for i in range(n_out))
        self.counters.generation_tokens += n_out
        self.counters.success += 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_out,
            "total_tokens": prompt_tokens + n_out,
        }
        if chat:
            return web.json_response(
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "tool_calls": []},
                            "logprobs": None,
                            "finish_reason": "length",
                            "stop_reason": None,
                        }
                    ],
                    "usage": usage,
                }
            )
        return web.json_response(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.BaseRequest,
        chat: bool,
        model: str,
        prompt_tokens: int,
        n_out: int,
        include_usage: bool,
        arrival: float | None = None,
        held: list[int] | None = None,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = loop.time()
        arrival = start if arrival is None else arrival
        held = [0] if held is None else held
        ttft = self.latency.ttft_ms(prompt_tokens) / 1000.0
        itl = self.latency.itl_ms / 1000.0
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        try:
            await resp.prepare(request)
        except ConnectionError:  # the client left while the request waited for a slot
            return resp
        created = int(time.time())
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        head = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        sent = 0
        previous = start
        try:
            # Chunks are rendered once per request as a template; only the token (plain vocabulary words that
            # need no JSON escaping) changes, which keeps hundreds of concurrent streams cheap.
            tail = ', "usage": null}' if include_usage else "}"
            prefix = json.dumps(head)[:-1] + ', "choices": [{"index": 0, '
            if chat:
                first = prefix + '"delta": {"role": "assistant", "content": "'
                middle = prefix + '"delta": {"content": "'
                end_open = '"}, "logprobs": null, "finish_reason": null}]' + tail
                end_last = '"}, "logprobs": null, "finish_reason": "length"}]' + tail
            else:
                first = middle = prefix + '"text": "'
                end_open = '", "logprobs": null, "finish_reason": null, "stop_reason": null}]' + tail
                end_last = '", "logprobs": null, "finish_reason": "length", "stop_reason": null}]' + tail
            for i in range(n_out):
                if self.stall_after_tokens is not None and i >= self.stall_after_tokens:
                    await self._stall(request)
                    return resp
                await _sleep_until(loop, start + ttft + i * itl)
                line = (first if i == 0 else middle) + _token(i) + (end_last if i == n_out - 1 else end_open)
                await resp.write(("data: " + line + "\n\n").encode())
                now = loop.time()
                if i == 0:
                    # From arrival, as vLLM measures it: time spent queued for a slot is part of the TTFT.
                    self.counters.ttft.observe(now - arrival)
                else:
                    self.counters.itl.observe(now - previous)
                previous = now
                sent += 1
                held[0] += 1
                self.counters.kv_tokens += 1
                self.counters.generation_tokens += 1
            if include_usage:
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": n_out,
                    "total_tokens": prompt_tokens + n_out,
                }
                await resp.write(
                    b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n"
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.counters.success += 1
        except ConnectionError:
            # The client went away mid-stream; a real engine aborts the request the same way.
            log.debug("stream aborted by the client after %d of %d tokens", sent, n_out)
        return resp

    async def _stall(self, request: web.BaseRequest) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + STALL_LIMIT_S
        while loop.time() < until and not self._closed:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            await asyncio.sleep(0.2)

    async def _embeddings(self, body: dict, model: str) -> web.StreamResponse:
        raw = body.get("input")
        if raw is None or raw == "" or raw == []:
            return _error(400, "input is required", "BadRequestError")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        tokens = sum(max(1, _prompt_tokens(x)) for x in inputs)
        loop = asyncio.get_running_loop()
        await _sleep_until(loop, loop.time() + self.latency.ttft_ms(tokens) / 1000.0)
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(inputs):
            vec = embedding_vector(model, json.dumps(item), self.embedding_dim)
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self.counters.prompt_tokens += tokens
        self.counters.success += 1
        return web.json_response(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # ------------------------------------------------------------------ metrics
    def kv_cache_usage(self) -> float:
        return min(1.0, self.counters.kv_tokens / self.kv_cache_tokens)

    def metrics_text(self) -> str:
        # Hand-written exposition: a handful of series, and prometheus_client's global registry would mix
        # the metrics of every simulated pod in the process.
        c = self.counters
        name = self.served_names[0].replace("\\", "\\\\").replace('"', '\\"')
        lbl = f'model_name="{name}"'
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{lbl}}} {c.running}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{lbl}}} {c.waiting}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{lbl}}} {self.kv_cache_usage():.6f}",
            "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            f"vllm:gpu_cache_usage_perc{{{lbl}}} {self.kv_cache_usage():.6f}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{lbl}}} {c.prompt_tokens}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{lbl}}} {c.generation_tokens}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{finished_reason="length",{lbl}}} {c.success}',
            "# HELP devcluster_request_errors_total Requests answered with a simulated engine error.",
            "# TYPE devcluster_request_errors_total counter",
            f"devcluster_request_errors_total{{{lbl}}} {c.errors}",
            "# HELP devcluster_requests_total HTTP requests by path.",
            "# TYPE devcluster_requests_total counter",
        ]
        for path, n in sorted(c.requests.items()):
            lines.append(f'devcluster_requests_total{{path="{path}",{lbl}}} {n}')
        lines += [
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
            *c.ttft.lines("vllm:time_to_first_token_seconds", lbl),
            "# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.",
            "# TYPE vllm:inter_token_latency_seconds histogram",
            *c.itl.lines("vllm:inter_token_latency_seconds", lbl),
        ]
        return "\n".join(lines) + "\n"


def embedding_vector(model: str, text: str, dim: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _token(i: int) -> str:
    return " " + _VOCAB[i % len(_VOCAB)]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(prompt: Any) -> int:
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return len(prompt)
        return sum(_prompt_tokens(x) for x in prompt)
    return 0


def _error(status: int, message: str, type_: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": status}}, status=status
    )


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def create_app(server: InferenceServer) -> web.Application:
    """A standalone aiohttp app answering every path through `server`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await server.handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devcluster.sim.inference", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--served-model-name", nargs="*")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    p.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    p.add_argument("--device-tflops", type=float, default=989.0, help="dense BF16 TFLOPS per device")
    p.add_argument("--device-bandwidth-gbs", type=float, default=3350.0, help="memory bandwidth per device")
    p.add_argument("--ttft-ms", type=float)
    p.add_argument("--itl-ms", type=float)
    p.add_argument("--fail-rate", type=float)
    p.add_argument("--stall-after-tokens", type=int)
    p.add_argument(
        "--kv-cache-tokens", type=int, help="KV cache capacity in tokens (default max-num-seqs x 1024)"
    )
    p.add_argument("--workers", type=int, default=1, help="serving processes sharing the port (SO_REUSEPORT)")
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop: uvloop when installed (auto, as vLLM's server runs), or the standard one",
    )
    a = p.parse_args(argv)
    args = {
        "model": a.model,
        "served-model-name": a.served_model_name,
        "tensor-parallel-size": a.tensor_parallel_size,
        "max-model-len": a.max_model_len,
        "max-num-seqs": a.max_num_seqs,
    }
    overrides = argparse.Namespace(
        ttft_ms=a.ttft_ms,
        itl_ms=a.itl_ms,
        fail_rate=a.fail_rate,
        stall_after_tokens=a.stall_after_tokens,
        kv_cache_tokens=a.kv_cache_tokens,
    )
    import os

    server = InferenceServer.from_settings(
        args,
        dict(os.environ),
        {"tflops": a.device_tflops, "bandwidth_gbs": a.device_bandwidth_gbs},
        overrides,
        a.port,
        "accelerator",
    )
    for line in server.startup_log():
        print(line, flush=True)
    workers = max(1, a.workers)
    for _ in range(workers - 1):
        # Forked before any event loop exists; a worker dies with the first process (PR_SET_PDEATHSIG).
        if os.fork() == 0:
            _die_with_parent()
            break
    web.run_app(
        create_app(server),
        host=a.host,
        port=a.port,
        print=None,
        loop=_new_loop(a.loop),
        reuse_port=workers > 1,
    )


def _die_with_parent() -> None:
    import contextlib
    import ctypes
    import signal

    # Not Linux: no death signal; stop the workers with their process group.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    # uvloop by default when installed, as vLLM's server runs under uvicorn: at 256 concurrent streams on two
    # cores the standard loop reads requests late enough to add 5-20 % to the TTFT a client measures
    # (tests/loadgen/test_simulator.py); the dependency stays optional.
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
