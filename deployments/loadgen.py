"""Load generator for OpenAI-compatible model endpoints, measured like vLLM's serving benchmark.

Design
------
One asyncio event loop drives every request; a dispatcher hands requests to at most `concurrency` in-flight
tasks, optionally pacing them with Poisson arrivals (exponential gaps from a seeded RNG, so a run is
repeatable).  Each request records, relative to one `time.perf_counter()` origin: when it was sent, the time
to the first chunk that carries content text (TTFT), every gap between content chunks (ITL), the end-to-end
latency (E2E), token counts and success or a readable error.  `benchstats` turns records into the stored
statistics and `plots` draws them; nothing here imports Django, so the API, the admin, Celery tasks and the
management command all call the same functions.

HTTP client: aiohttp 3.x.  httpx 0.28 (pure-Python h11 parsing, one anyio stream per connection) was measured
against aiohttp on this 2-core machine with the devcluster inference simulator (200 ms TTFT, 20 ms ITL):
at 64 concurrent streams httpx reported a mean TTFT of ~490 ms and at 256 streams ~3.4 s, while aiohttp
(C HTTP parser, buffered StreamReader) stayed within a few percent of the truth.  The client's own overhead
is what a benchmark must keep out of its numbers, so aiohttp it is.

Keeping client overhead low (so TTFT at 256 streams stays close to the server's truth):
- request bodies are JSON-encoded before the clock starts; the hot path only posts bytes;
- the SSE stream is read with `iter_any()` (one wake-up per socket read, not per line) and stamped once per
  read; lines are split with `bytes.split` and only `data:` payloads are `json.loads`-ed (C code);
- connections are pooled (pool size >= concurrency) and kept alive; warm-up requests open them before the
  measured part starts;
- no cookie jar, no decompression; uvloop drives the loop when it is installed (`run_benchmark_sync`).

Measured with `benchmarks/benchmark_client.py` (simulator in its own process, 16 output tokens, streams
started over one TTFT with `ramp_up_s`): mean TTFT error 0.7 % at 256 streams and 4.8 % at 512 with uvloop on
both sides; 3.9 % at 256 with the standard loop on both sides.  With no ramp-up (all streams start in one
burst, vLLM's default) the error at 256 is ~17 %, but it is the server working through a burst of 256
requests: the time to the response headers (`RequestRecord.headers`, sent by the simulator when its handler
starts) accounts for all of it.  Those figures are from an idle machine; with the two cores shared (load average
~3) the same script measured 55 % at 256 streams from one process and 7.8 % from four load processes
(`processes`), the rest being the simulator's own delay; at 512 and 1,024 streams the simulator and the client
starve each other of CPU there (README, "Benchmarks to an SLO").

Synthetic prompts: a prompt of N tokens is N lowercase words from a small vocabulary of common English words,
separated by single spaces, drawn with the seeded RNG (so prompts differ per request and prefix caching does not
flatter the numbers).  The devcluster simulator counts prompt tokens as words and punctuation marks
(`\\w+|[^\\w\\s]`), so such a prompt is exactly N tokens there; real tokenizers give about one token per common
word.  Chat requests send the prompt as one user message; the server's chat template adds its own tokens (the
simulator renders "user: <text>", i.e. +2).  The recorded input tokens come from the server's `usage` when
it reports one, so stored numbers are the server's count, not this estimate.

ShareGPT datasets (JSON list of `{"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`): the first
human turn is the prompt and the following gpt turn's token count (same word counting) is the requested output
length, as in vLLM's benchmark.  Conversations without such a pair are skipped; `num_requests` entries are
sampled with the seeded RNG (with repetition when the file has fewer).

Synthetic workloads besides independent prompts (`workload`, seeded like the rest): ``shared_prefix`` gives
request i the prefix i % `prefix_groups` (each `prefix_tokens` words, the same for every request of the group, so
a server's prefix cache can reuse it) followed by `input_tokens` words of its own; ``multi_turn`` makes
conversations of `turns` turns, each turn carrying the previous user messages and assistant answers (stand-ins of
`output_tokens` words) and sent only once the previous turn of its conversation has finished.

Scheduled and actual send.  Every request is stamped with when it was due (`RequestRecord.scheduled`: its
Poisson arrival; with no pacing, the moment its concurrency slot freed up; for a later turn, no earlier than the
previous turn's end) and when it actually left (`start`).  The difference is the client's own lag: with a rate
the concurrency cannot carry, requests wait for a slot inside the client and latency measured from the actual
send hides it (vLLM issue 54101: p99 TTFT 507 ms from the actual send, 3,330 ms from the scheduled one), so
`benchstats` reports TTFT and E2E from both and judges SLOs from the scheduled one.  The run also records how late
a 10 ms timer fires on the event loop (`loop_delays`) and the CPU each load process used, so a run whose client
was the bottleneck can be flagged (`benchstats.client_health`).

Several load processes (`processes`): one event loop stamps chunks late once it carries a few hundred streams
on a core, so the requests can be spread over that many processes (`_run_processes`), each with its own loop
and connection pool and a share of the concurrency; they start together on one schedule, and their records come
back in send order.  Series of runs (concurrency sweeps, request-rate sweeps, repetitions, a climb until goodput
drops) are plans for `run_series`.

Errors are never hidden: an HTTP error keeps its status and the server's message, a stalled stream hits the
idle timeout (`idle_timeout_s` without a byte), a slow one the total timeout (`timeout_s`), and both are
counted as failed requests with their messages.

Pinning: with `pinned_address` (the IP the outbound-address guard checked for the endpoint's host), every
connection goes to that IP, the name kept for the Host header, SNI and certificate verification, and no other
host is ever resolved (`_PinnedResolver`): the name cannot be re-pointed between the check and the requests
(DNS rebinding). Redirects are never followed, so a redirect cannot lead the load elsewhere either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import os
import pickle
import queue
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp

EndpointKind = Literal["completions", "chat", "embeddings"]
Workload = Literal["random", "shared_prefix", "multi_turn"]
WORKLOADS = ("random", "shared_prefix", "multi_turn")
MAX_PROCESSES = 16
ENDPOINT_PATHS: dict[str, str] = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}

# Common English words that are one token for the usual BPE vocabularies (with the leading space) and exactly
# one `\w+` match for the devcluster simulator.
_WORDS = (
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what",
    "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do",
    "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some",
    "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see",
    "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil",
    "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
)  # fmt: skip
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_ERROR_EXCERPT = 200


def count_tokens(text: str) -> int:
    """Token estimate used when the server reports no usage: words and punctuation marks (the simulator's rule)."""
    return len(_TOKEN_RE.findall(text))


class CancelFlag(Protocol):
    """Anything with a cheap `is_set()` (threading.Event, asyncio.Event, or a flag mirrored from the database)."""

    def is_set(self) -> bool: ...


ProgressCallback = Callable[[int, int], None]


@dataclass
class LoadSettings:
    """What to send, how much and how fast.  Times are seconds; `request_rate` is requests/second."""

    base_url: str  # "http://host:port" or ".../v1"; the endpoint path is appended
    model: str
    endpoint: EndpointKind = "chat"
    num_requests: int = 100
    concurrency: int = 32  # in-flight limit
    request_rate: float = math.inf  # Poisson arrivals at this mean rate; inf = send as fast as slots free up
    input_tokens: int = 128  # synthetic prompt length
    output_tokens: int = 128  # max_tokens asked for (ignore_eos makes vLLM generate exactly this many)
    dataset_path: str | None = None  # ShareGPT JSON; replaces the synthetic prompts and output lengths
    warmup_requests: int = 0  # sent first at the same concurrency, not counted
    ramp_up_s: float = 0.0  # spread the first `concurrency` sends evenly over this time instead of one burst
    timeout_s: float = 300.0  # whole request
    idle_timeout_s: float = 30.0  # longest silence while waiting for any byte (headers, next chunk): a stall
    # Extra request headers, e.g. {"Authorization": "Bearer ..."}; never logged or stored (public_dict).
    headers: dict[str, str] = field(default_factory=dict)
    # TLS for https endpoints: None verifies against the system CAs, an SSLContext carries a private CA (and
    # client certificate, if any), False skips verification (dev only).  Not stored, like `headers`.
    ssl_context: ssl.SSLContext | bool | None = field(default=None, repr=False)
    # The IP the endpoint's host was checked at (core.netguard.check_host_at_connect): connect only there.
    pinned_address: str | None = None
    seed: int = 0
    ignore_eos: bool = True
    progress_interval_s: float = 0.25  # the progress callback is called at most this often (plus at the end)
    # Synthetic workloads (module docstring): independent prompts, prompts sharing one of `prefix_groups`
    # prefixes of `prefix_tokens`, or conversations of `turns` turns each carrying the history so far.
    workload: Workload = "random"
    prefix_tokens: int = 256
    prefix_groups: int = 4
    turns: int = 4
    processes: int = 1  # event loops in their own processes, sharing the requests and the concurrency

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINT_PATHS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINT_PATHS)}, not {self.endpoint!r}")
        if self.num_requests < 1 or self.concurrency < 1:
            raise ValueError("num_requests and concurrency must be at least 1")
        if not self.request_rate > 0:
            raise ValueError("request_rate must be positive (math.inf for unlimited)")
        if self.input_tokens < 1 or self.output_tokens < 1:
            raise ValueError("input_tokens and output_tokens must be at least 1")
        if self.timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.ramp_up_s < 0:
            raise ValueError("ramp_up_s must not be negative")
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {list(WORKLOADS)}, not {self.workload!r}")
        if self.prefix_tokens < 1 or self.prefix_groups < 1 or self.turns < 1:
            raise ValueError("prefix_tokens, prefix_groups and turns must be at least 1")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be between 1 and {MAX_PROCESSES}")
        if self.processes > self.concurrency:
            raise ValueError("processes must not exceed concurrency (each process needs a stream)")
        if self.processes > 1 and isinstance(self.ssl_context, ssl.SSLContext):
            # An SSLContext cannot cross a process boundary; the processes verify against the system CAs.
            raise ValueError("processes > 1 cannot carry a custom ssl_context")

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        base = base.removesuffix("/v1")
        return base + ENDPOINT_PATHS[self.endpoint]

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | bool | None = None,
    ) -> LoadSettings:
        """Settings back from `public_dict()` output (or any dict of field values); secrets come separately."""
        names = {f.name for f in fields(cls)} - {"headers", "ssl_context"}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("request_rate") is None:
            values.pop("request_rate", None)
        return cls(**values, headers=dict(headers or {}), ssl_context=ssl_context)

    def public_dict(self) -> dict[str, Any]:
        """Settings for storage/display: header names only, never their values."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "endpoint": self.endpoint,
            "num_requests": self.num_requests,
            "concurrency": self.concurrency,
            "request_rate": None if math.isinf(self.request_rate) else self.request_rate,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "dataset_path": self.dataset_path,
            "warmup_requests": self.warmup_requests,
            "ramp_up_s": self.ramp_up_s,
            "timeout_s": self.timeout_s,
            "idle_timeout_s": self.idle_timeout_s,
            "header_names": sorted(self.headers),
            "tls": "insecure" if self.ssl_context is False else "custom" if self.ssl_context else "default",
            "pinned_address": self.pinned_address,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
            "workload": self.workload,
            "prefix_tokens": self.prefix_tokens,
            "prefix_groups": self.prefix_groups,
            "turns": self.turns,
            "processes": self.processes,
        }


@dataclass(slots=True)
class RequestRecord:
    """One measured request.  Times are seconds; `start` is relative to the start of the measured run."""

    start: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    success: bool = False
    error: str | None = None
    # Time to the response headers: servers that answer headers before the first token (vLLM, the simulator)
    # make TTFT - headers the part of TTFT spent generating rather than queueing (a diagnostic, not stored).
    headers: float | None = None
    # When the request was due (its arrival on the schedule, or the moment a slot freed up when unpaced);
    # `start - scheduled` is the client's own send lag (see the module docstring). None: not known (old data).
    scheduled: float | None = None

    @property
    def send_lag(self) -> float:
        return 0.0 if self.scheduled is None else max(0.0, self.start - self.scheduled)

    @property
    def ttft_from_scheduled(self) -> float | None:
        return None if self.ttft is None else self.ttft + self.send_lag

    @property
    def e2e_from_scheduled(self) -> float | None:
        return None if self.e2e is None else self.e2e + self.send_lag

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); None for one-token (or failed) requests."""
        if not self.success or self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class BenchmarkResult:
    """A finished (or cancelled: `partial`) run.  `requests` holds finished requests in send order."""

    settings: LoadSettings
    requests: list[RequestRecord]
    duration_s: float  # first send to last completion
    partial: bool = False
    # The client's own health over the measured part: event-loop wake-up delays (seconds, every process
    # pooled) and, per process, its CPU seconds and the wall time they were spent in.
    loop_delays: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency


@dataclass(slots=True)
class PreparedRequest:
    body: bytes
    prompt_tokens: int
    output_tokens: int
    group: int = -1  # conversation (multi-turn): its turns stay in one process, in order
    after: int | None = None  # index of the request that must finish before this one is sent (previous turn)


# --------------------------------------------------------------------------- request preparation
def arrival_offsets(n: int, rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of `n` Poisson arrivals at `rate`/s; all zero when rate is inf."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)  # noqa: S311 - seeded for repeatable workloads, not security
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def ramped(offsets: list[float], concurrency: int, ramp_up_s: float) -> list[float]:
    """`offsets` with the first `concurrency` sends no earlier than i * ramp_up_s / concurrency."""
    if ramp_up_s <= 0:
        return offsets
    step = ramp_up_s / concurrency
    return [max(t, i * step) if i < concurrency else t for i, t in enumerate(offsets)]


def synthetic_prompt(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choices(_WORDS, k=tokens))


def load_sharegpt(path: str | Path, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, output token count) pairs sampled from a ShareGPT file (see the module docstring)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError("a ShareGPT dataset is a JSON list of {conversations: [...]} entries")
    pairs: list[tuple[str, int]] = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            continue
        for a, b in itertools.pairwise(turns):
            if not (isinstance(a, dict) and isinstance(b, dict)):
                continue
            if a.get("from") == "human" and b.get("from") == "gpt":
                prompt, reply = str(a.get("value") or ""), str(b.get("value") or "")
                if prompt.strip() and count_tokens(reply) > 0:
                    pairs.append((prompt, count_tokens(reply)))
                break
    if not pairs:
        raise ValueError(f"no usable human/gpt turn pairs in {path}")
    rng = random.Random(seed)  # noqa: S311 - seeded for repeatable workloads, not security
    if len(pairs) >= n:
        return rng.sample(pairs, n)
    return [rng.choice(pairs) for _ in range(n)]


def build_body(
    settings: LoadSettings, prompt: str, max_tokens: int, messages: list[dict[str, str]] | None = None
) -> bytes:
    """The request body; `messages` (a conversation) replaces the single user message of `prompt`."""
    payload: dict[str, Any] = {"model": settings.model}
    if settings.endpoint == "embeddings":
        payload["input"] = prompt
    else:
        if settings.endpoint == "chat":
            payload["messages"] = messages or [{"role": "user", "content": prompt}]
            payload["max_completion_tokens"] = max_tokens
        else:
            payload["prompt"] = prompt
        payload["max_tokens"] = max_tokens
        payload["temperature"] = 0.0
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        if settings.ignore_eos:
            payload["ignore_eos"] = True  # vLLM extension: generate exactly max_tokens
    return json.dumps(payload, separators=(",", ":")).encode()


def _shared_prefix_requests(settings: LoadSettings, n: int, rng: random.Random) -> list[PreparedRequest]:
    # The prefixes come from their own RNG seeded by `seed` alone, so warm-up requests share them with the
    # measured ones (a warm-up then fills the server's prefix cache, as production traffic would).
    prefix_rng = random.Random(settings.seed * 7_919 + 17)  # noqa: S311
    prefixes = [synthetic_prompt(prefix_rng, settings.prefix_tokens) for _ in range(settings.prefix_groups)]
    out = []
    for i in range(n):
        prompt = prefixes[i % settings.prefix_groups] + " " + synthetic_prompt(rng, settings.input_tokens)
        out.append(
            PreparedRequest(
                build_body(settings, prompt, settings.output_tokens),
                settings.prefix_tokens + settings.input_tokens,
                settings.output_tokens,
            )
        )
    return out


def _multi_turn_requests(settings: LoadSettings, n: int, rng: random.Random) -> list[PreparedRequest]:
    """Conversations of `turns` turns, turn-major (every first turn, then every second ...).

    Turn k carries the k previous user messages and assistant answers; the answers are stand-ins of exactly
    `output_tokens` words (what the server was asked to generate), so the workload is the same whatever the
    server answers, and repeatable.  Turn k is sent after turn k - 1 of its conversation finished (`after`).
    """
    conversations = math.ceil(n / settings.turns)
    users = [[synthetic_prompt(rng, settings.input_tokens) for _ in range(settings.turns)]
             for _ in range(conversations)]  # fmt: skip
    answers = [[synthetic_prompt(rng, settings.output_tokens) for _ in range(settings.turns)]
               for _ in range(conversations)]  # fmt: skip
    out: list[PreparedRequest] = []
    index: dict[tuple[int, int], int] = {}
    for turn in range(settings.turns):
        for c in range(conversations):
            if len(out) == n:
                break
            messages: list[dict[str, str]] = []
            for k in range(turn):
                messages += [
                    {"role": "user", "content": users[c][k]},
                    {"role": "assistant", "content": answers[c][k]},
                ]
            messages.append({"role": "user", "content": users[c][turn]})
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            index[(c, turn)] = len(out)
            out.append(
                PreparedRequest(
                    build_body(settings, prompt, settings.output_tokens, messages),
                    settings.input_tokens * (turn + 1) + settings.output_tokens * turn,
                    settings.output_tokens,
                    group=c,
                    after=index[(c, turn - 1)] if turn else None,
                )
            )
    return out


def prepare_requests(settings: LoadSettings, n: int, seed_offset: int = 0) -> list[PreparedRequest]:
    """Encode `n` request bodies up front, so the measured loop only posts bytes."""
    if settings.dataset_path:
        pairs = load_sharegpt(settings.dataset_path, n, settings.seed + seed_offset)
        return [PreparedRequest(build_body(settings, p, k), count_tokens(p), k) for p, k in pairs]
    rng = random.Random(settings.seed * 1_000_003 + seed_offset)  # noqa: S311
    if settings.workload == "shared_prefix":
        return _shared_prefix_requests(settings, n, rng)
    if settings.workload == "multi_turn":
        return _multi_turn_requests(settings, n, rng)
    out = []
    for _ in range(n):
        prompt = synthetic_prompt(rng, settings.input_tokens)
        out.append(
            PreparedRequest(
                build_body(settings, prompt, settings.output_tokens),
                settings.input_tokens,
                settings.output_tokens,
            )
        )
    return out


# --------------------------------------------------------------------------- one request
def _error_text(status: int, raw: bytes) -> str:
    """ "HTTP <status>: <server message>" with the OpenAI error message when the body has one."""
    text = raw.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
        elif isinstance(obj, dict) and obj.get("message"):  # Kubernetes Status bodies (service proxy)
            text = str(obj["message"])
    except ValueError:
        pass
    text = " ".join(text.split())
    if len(text) > _ERROR_EXCERPT:
        text = text[:_ERROR_EXCERPT] + "..."
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _exception_text(exc: BaseException, settings: LoadSettings) -> str:
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return f"timeout: no data for {settings.idle_timeout_s:g} s (stalled stream)"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"timeout: could not connect within {min(settings.idle_timeout_s, settings.timeout_s):g} s"
    if isinstance(exc, TimeoutError):
        return f"timeout: request took longer than {settings.timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection error: response ended early (incomplete body)"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"connection error: {type(exc).__name__}: {exc}"[: _ERROR_EXCERPT + 40]
    return f"client error: {type(exc).__name__}: {exc}"[: _ERROR_EXCERPT + 40]


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    settings: LoadSettings,
    req: PreparedRequest,
    origin: float,
    scheduled: float | None = None,
) -> RequestRecord:
    perf = time.perf_counter
    loads = json.loads
    sent = perf()
    rec = RequestRecord(start=sent - origin, input_tokens=req.prompt_tokens, scheduled=scheduled)
    try:
        async with session.post(url, data=req.body, allow_redirects=False) as resp:
            rec.headers = perf() - sent
            if resp.status != 200:
                rec.error = _error_text(resp.status, await resp.read())
                return rec
            if settings.endpoint == "embeddings":
                obj = loads(await resp.read())
                rec.e2e = perf() - sent
                usage = obj.get("usage") or {}
                rec.input_tokens = int(usage.get("prompt_tokens") or req.prompt_tokens)
                rec.success = bool(obj.get("data"))
                if not rec.success:
                    rec.error = "response carried no embeddings"
                return rec

            itl = rec.itl
            first = last = 0.0
            chunks = 0
            usage = None
            done = False
            pending = b""
            async for data in resp.content.iter_any():
                now = perf()  # one stamp per socket read: every event in it arrived now
                if pending:
                    data = pending + data
                lines = data.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, "event:" lines
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    obj = loads(payload)
                    choices = obj.get("choices")
                    if choices:
                        c0 = choices[0]
                        delta = c0.get("delta")
                        text = (
                            (delta.get("content") or delta.get("reasoning_content"))
                            if delta
                            else c0.get("text")
                        )
                        if text:
                            if chunks:
                                itl.append(now - last)
                            else:
                                first = now
                            last = now
                            chunks += 1
                    u = obj.get("usage")
                    if u:
                        usage = u
                    elif "error" in obj:
                        err = obj["error"]
                        msg = err.get("message") if isinstance(err, dict) else err
                        rec.error = f"stream error: {str(msg)[:_ERROR_EXCERPT]}"
            end = perf()
            if rec.error:
                return rec
            if not chunks:
                rec.error = "stream carried no content"
                return rec
            if not done:
                rec.error = f"stream ended before [DONE] after {chunks} chunks"
                return rec
            rec.ttft = first - sent
            rec.e2e = end - sent
            if usage:
                rec.input_tokens = int(usage.get("prompt_tokens") or req.prompt_tokens)
                rec.output_tokens = int(usage.get("completion_tokens") or chunks)
            else:
                rec.output_tokens = chunks
            rec.success = True
            return rec
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure becomes a counted, readable error; none aborts the run
        rec.error = _exception_text(exc, settings)
        rec.itl.clear()
        return rec


# --------------------------------------------------------------------------- the run
class _PinnedResolver(aiohttp.abc.AbstractResolver):
    """Resolves the endpoint's host name to the address that was checked, and nothing else."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host.lower().rstrip(".")
        self.address = address
        self.family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        if host.lower().rstrip(".") != self.host:
            raise OSError(f"{host} is not the checked endpoint host {self.host}; not connecting")
        return [
            {"hostname": host, "host": self.address, "port": port, "family": self.family, "proto": 0,
             "flags": socket.AI_NUMERICHOST}
        ]  # fmt: skip

    async def close(self) -> None:
        return None


def _session(settings: LoadSettings, concurrency: int) -> aiohttp.ClientSession:
    resolver = None
    host = urlsplit(settings.base_url).hostname or ""
    if settings.pinned_address and host != settings.pinned_address:  # an IP literal needs no resolving
        resolver = _PinnedResolver(host, settings.pinned_address)
    connector = aiohttp.TCPConnector(
        limit=concurrency + 8,
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=None if resolver is not None else 300,
        resolver=resolver,
        ssl=True if settings.ssl_context is None else settings.ssl_context,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout_s,
        sock_read=settings.idle_timeout_s,
        sock_connect=min(settings.idle_timeout_s, settings.timeout_s),
    )
    headers = {"Content-Type": "application/json", **settings.headers}
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        raise_for_status=False,
    )


@dataclass
class _Outcome:
    """What one event loop measured: records by request index (None: never finished), the shared origin, the
    last completion, whether it was stopped, its loop delays and its CPU use (see `BenchmarkResult`)."""

    records: list[RequestRecord | None]
    origin: float
    last_end: float
    stopped: bool
    loop_delays: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)


LOOP_PROBE_S = 0.01  # how often the event-loop delay is sampled


async def _watch_loop(delays: list[float]) -> None:
    """How late a timer fires: a loop busy with other callbacks (or starved of CPU) wakes late, and so is every
    send and every receive stamp it makes; that lateness is the client's, not the server's."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_PROBE_S
        await asyncio.sleep(LOOP_PROBE_S)
        delays.append(max(0.0, loop.time() - due))


async def _drive(
    session: aiohttp.ClientSession,
    settings: LoadSettings,
    reqs: Sequence[PreparedRequest],
    arrivals: Sequence[float],
    stop: asyncio.Event,
    advance: Callable[[int], None] | None,
    origin: float | None = None,
) -> _Outcome:
    """Send `reqs` at `arrivals` with at most `concurrency` in flight.

    `origin` (a `time.perf_counter()` value, possibly a moment ahead) is the time arrivals count from; the load
    processes of one run share it.  Each request is stamped with when it was due: its arrival (or, for a later
    turn of a conversation, when the previous turn finished, if that is later), or with no pacing (rate inf) the
    moment its slot freed up.
    """
    url = settings.url
    perf = time.perf_counter
    slots = asyncio.Semaphore(settings.concurrency)
    records: list[RequestRecord | None] = [None] * len(reqs)
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    if origin is None:
        origin = perf()
    elif origin > perf():
        await asyncio.sleep(origin - perf())
    paced = not math.isinf(settings.request_rate)
    waited = {r.after for r in reqs if r.after is not None}
    turn_done = {i: asyncio.Event() for i in waited}
    finished_at: dict[int, float] = {}
    last_end = origin
    delays: list[float] = []
    cpu0, wall0 = time.process_time(), perf()

    async def one(i: int, due: float) -> None:
        nonlocal last_end
        try:
            rec = await _send(session, url, settings, reqs[i], origin, due)
            records[i] = rec
            last_end = perf()
            if advance is not None:
                advance(1)
        finally:
            slots.release()
            event = turn_done.get(i)
            if event is not None:
                finished_at[i] = perf() - origin
                event.set()

    async def dispatch() -> None:
        for i in range(len(reqs)):
            due = arrivals[i]
            after = reqs[i].after
            if after is not None:
                await turn_done[after].wait()
                due = max(due, finished_at[after])
            delay = due - (perf() - origin)
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            if not paced:
                # Unpaced, a request is due when its slot frees up: only the client's own delay is lag.
                due = max(due, perf() - origin)
            task = loop.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    monitor = loop.create_task(_watch_loop(delays))
    dispatcher = loop.create_task(dispatch())
    stop_wait = loop.create_task(stop.wait())
    try:
        await asyncio.wait({dispatcher, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped = not dispatcher.done()
        for t in (monitor, dispatcher, stop_wait, *tasks):
            t.cancel()
        await asyncio.gather(monitor, dispatcher, stop_wait, *tasks, return_exceptions=True)
    cpu = [{"cpu_s": time.process_time() - cpu0, "wall_s": perf() - wall0}]
    return _Outcome(records, origin, last_end, stopped, delays, cpu)


async def _watch_cancel(cancel: CancelFlag, stop: asyncio.Event) -> None:
    # Polled rather than awaited so a threading.Event set from another thread (or a database-backed flag)
    # works the same as an asyncio.Event.
    while not cancel.is_set():
        await asyncio.sleep(0.05)
    stop.set()


async def run_benchmark(
    settings: LoadSettings,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> BenchmarkResult:
    """Run warm-up then the measured requests; on cancel returns what finished, marked `partial`.

    `progress(done, total)` is called from the event loop thread at most every `progress_interval_s` and once
    at the end; keep it quick.  Synchronous callers that touch the database use `run_benchmark_sync`.
    With `settings.processes` > 1 the requests are sent by that many load processes (`_run_processes`).
    """
    reqs = prepare_requests(settings, settings.num_requests)
    warm = (
        prepare_requests(settings, settings.warmup_requests, seed_offset=1)
        if settings.warmup_requests
        else []
    )
    arrivals = ramped(
        arrival_offsets(settings.num_requests, settings.request_rate, settings.seed),
        settings.concurrency,
        settings.ramp_up_s,
    )
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_cancel(cancel, stop)) if cancel is not None else None
    total = settings.num_requests
    state = {"done": 0, "last": 0.0, "reported": -1}

    def advance(k: int) -> None:
        state["done"] += k
        now = time.monotonic()
        if progress is not None and (
            now - state["last"] >= settings.progress_interval_s or state["done"] == total
        ):
            state["last"] = now
            state["reported"] = state["done"]
            progress(state["done"], total)

    try:
        if settings.processes > 1:
            outcome = await _run_processes(settings, reqs, arrivals, warm, stop, advance)
        else:
            async with _session(settings, settings.concurrency) as session:
                if warm:
                    warm_settings = replace(settings, request_rate=math.inf)
                    warm_arrivals = ramped([0.0] * len(warm), settings.concurrency, settings.ramp_up_s)
                    await _drive(session, warm_settings, warm, warm_arrivals, stop, None)
                if stop.is_set():
                    return BenchmarkResult(settings, [], 0.0, partial=True)
                outcome = await _drive(session, settings, reqs, arrivals, stop, advance)
    finally:
        if watcher is not None:
            watcher.cancel()
    finished = [r for r in outcome.records if r is not None]
    if progress is not None and state["reported"] != len(finished):
        progress(len(finished), total)
    duration = max(0.0, outcome.last_end - outcome.origin) if finished else 0.0
    return BenchmarkResult(
        settings,
        finished,
        duration,
        partial=outcome.stopped or len(finished) < total,
        loop_delays=outcome.loop_delays,
        cpu=outcome.cpu,
    )


# --------------------------------------------------------------------------- several load processes
# A process of its own per share of the streams: one Python event loop tops out at a few hundred streams on a
# core (parsing chunks, stamping them), after which its own delay shows up as latency.  Each load process gets
# a job (its requests with their arrival times, its share of the concurrency and of the warm-up) as one frame
# on stdin, warms up, says "ready", and starts at the origin the parent then sends ("go", origin): a
# `time.perf_counter()` value, which on Linux is CLOCK_MONOTONIC, one clock for every process of the machine.
# Frames are a 4-byte length and a pickle, exchanged only with a child this module started.  A child stops on
# ("stop",) or when its stdin closes (the parent went away), and dies with the parent's thread
# (PR_SET_PDEATHSIG) if that thread is killed outright.
_FRAME = struct.Struct(">I")
_ROOT = Path(__file__).resolve().parents[1]
_CHILD_CODE = "from deployments.loadgen import child_main; child_main()"


def _write_frame(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: Any) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - frames come only from a load process this module started


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _shards(reqs: Sequence[PreparedRequest], processes: int) -> list[list[int]]:
    """Request indexes per process: round-robin over the send order (each process's arrivals thin the Poisson
    process evenly), a conversation's turns kept together in one process."""
    out: list[list[int]] = [[] for _ in range(processes)]
    for i, r in enumerate(reqs):
        out[(r.group if r.group >= 0 else i) % processes].append(i)
    return out


def _local(reqs: Sequence[PreparedRequest], indexes: list[int]) -> list[PreparedRequest]:
    pos = {g: k for k, g in enumerate(indexes)}
    return [replace(reqs[g], after=None if reqs[g].after is None else pos[reqs[g].after]) for g in indexes]


def _pump(k: int, stream: Any, inbox: queue.SimpleQueue) -> None:
    try:
        while (msg := _read_frame(stream)) is not None:
            inbox.put((k, msg))
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        inbox.put((k, ("error", f"unreadable frame: {exc}")))
    inbox.put((k, ("eof",)))


def _control(proc: subprocess.Popen, msg: tuple) -> None:
    # A child that has exited already cannot be told; its end is reported through its stdout.
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        _write_frame(proc.stdin, msg)


async def _run_processes(
    settings: LoadSettings,
    reqs: Sequence[PreparedRequest],
    arrivals: Sequence[float],
    warm: Sequence[PreparedRequest],
    stop: asyncio.Event,
    advance: Callable[[int], None],
) -> _Outcome:
    """The run spread over `settings.processes` load processes; their records merged back in send order."""
    n = settings.processes
    shards, warm_shards = _shards(reqs, n), _shards(warm, n)
    concurrency = _split(settings.concurrency, n)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    procs: dict[int, subprocess.Popen] = {}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env["BUDCLUSTER_LOADGEN_PARENT"] = str(os.getpid())
    results: dict[int, _Outcome] = {}
    origin: float | None = None
    try:
        for k in range(n):
            if not shards[k]:
                continue
            proc = subprocess.Popen(  # this interpreter, running this module
                [sys.executable, "-c", _CHILD_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT,
                env=env,
            )  # fmt: skip
            procs[k] = proc
            threading.Thread(
                target=_pump, args=(k, proc.stdout, inbox), name=f"loadgen-{k}", daemon=True
            ).start()
            child = replace(settings, processes=1, concurrency=concurrency[k], num_requests=len(shards[k]))
            job = {
                "settings": child,
                "reqs": _local(reqs, shards[k]),
                "arrivals": [arrivals[i] for i in shards[k]],
                "warm": _local(warm, warm_shards[k]),
            }
            try:
                _write_frame(proc.stdin, job)
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError(f"load process {k} did not take its job: {exc}") from None
        ready: set[int] = set()
        stopping = False
        while len(results) < len(procs):
            if stop.is_set() and not stopping:
                stopping = True
                for proc in procs.values():
                    _control(proc, ("stop",))
            try:
                k, msg = inbox.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
                continue
            kind = msg[0]
            if kind == "progress":
                advance(msg[1])
            elif kind == "ready":
                ready.add(k)
                if len(ready) == len(procs) and not stopping:
                    # A moment ahead, so every process has the message before the first send is due.
                    origin = time.perf_counter() + 0.05
                    for proc in procs.values():
                        _control(proc, ("go", origin))
            elif kind == "result":
                results[k] = msg[1]
            elif kind == "error":
                raise RuntimeError(f"load process {k} failed: {msg[1]}")
            elif kind == "eof" and k not in results:
                code = procs[k].wait(timeout=10)
                raise RuntimeError(f"load process {k} exited (status {code}) before reporting its requests")
    finally:
        for proc in procs.values():
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # EOF: a child still running stops
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
    records: list[RequestRecord | None] = [None] * len(reqs)
    for k, out in results.items():
        for local, rec in enumerate(out.records):
            records[shards[k][local]] = rec
    if origin is None:  # stopped before the measured part began
        return _Outcome(records, 0.0, 0.0, True)
    return _Outcome(
        records,
        origin,
        max([out.last_end for out in results.values()] + [origin]),
        any(out.stopped for out in results.values()),
        [d for out in results.values() for d in out.loop_delays],
        [c for out in results.values() for c in out.cpu],
    )


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stdin EOF still stops the process when the parent closes it
    if os.environ.get("BUDCLUSTER_LOADGEN_PARENT") not in (None, str(os.getppid())):
        os._exit(1)  # the parent died before the death signal was armed


def child_main() -> None:
    """A load process: its job from stdin, frames to stdout ("ready", "progress", "result" or "error")."""
    _die_with_parent()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    job = _read_frame(inp)
    if job is None:
        return
    code = 0
    try:
        _run_loop(_child(job, inp, out))
    except BaseException as exc:  # reported to the parent, which fails the run with it
        code = 1
        with contextlib.suppress(OSError):
            _write_frame(out, ("error", f"{type(exc).__name__}: {exc}"))
    # Straight out: the control thread may be blocked reading stdin, which interpreter shutdown cannot join.
    with contextlib.suppress(OSError):
        out.flush()
    os._exit(code)


async def _child(job: dict, inp: Any, out: Any) -> None:
    settings: LoadSettings = job["settings"]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    go: asyncio.Future = loop.create_future()

    def post(callback: Callable[[], Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to tell
            loop.call_soon_threadsafe(callback)

    def control() -> None:
        while True:
            msg = _read_frame(inp)
            if msg is None or msg[0] == "stop":
                post(stop.set)
                if msg is None:
                    return
            elif msg[0] == "go":
                post(lambda o=msg[1]: go.done() or go.set_result(o))

    threading.Thread(target=control, name="loadgen-control", daemon=True).start()
    state = {"done": 0, "sent": 0, "last": 0.0}

    def advance(k: int) -> None:
        state["done"] += k
        now = time.monotonic()
        if now - state["last"] >= 0.1:
            state["last"] = now
            _write_frame(out, ("progress", state["done"] - state["sent"]))
            state["sent"] = state["done"]

    async with _session(settings, settings.concurrency) as session:
        warm = job["warm"]
        if warm:
            arrivals = ramped([0.0] * len(warm), settings.concurrency, settings.ramp_up_s)
            await _drive(session, replace(settings, request_rate=math.inf), warm, arrivals, stop, None)
        _write_frame(out, ("ready",))
        stop_wait = loop.create_task(stop.wait())
        await asyncio.wait({go, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not go.done():
            outcome = _Outcome([None] * len(job["reqs"]), 0.0, 0.0, True)
        else:
            outcome = await _drive(
                session, settings, job["reqs"], job["arrivals"], stop, advance, go.result()
            )
    if state["done"] > state["sent"]:
        _write_frame(out, ("progress", state["done"] - state["sent"]))
    _write_frame(out, ("result", outcome))


# --------------------------------------------------------------------------- series of runs
def _plan_list(points: Sequence[LoadSettings]) -> Callable[[list[BenchmarkResult]], LoadSettings | None]:
    return lambda done: points[len(done)] if len(done) < len(points) else None


async def run_series(
    plan: Callable[[list[BenchmarkResult]], LoadSettings | None],
    total: int,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> list[BenchmarkResult]:
    """Runs one after another while `plan(results so far)` names the next settings (None: done).

    Sweeps over concurrency or request rate, repetitions and searches ("until goodput drops") are plans.
    Progress counts requests over the whole series against `total` (the plan's most).  A cancel stops the
    current run (its partial result is kept, marked partial) and skips the rest.
    """
    results: list[BenchmarkResult] = []
    base = 0
    while not (cancel is not None and cancel.is_set()):
        point = plan(results)
        if point is None:
            break

        def step(done: int, _total: int, base: int = base) -> None:
            if progress is not None:
                progress(base + done, max(total, base + done))

        result = await run_benchmark(point, step, cancel)
        results.append(result)
        base += point.num_requests
        if result.partial:
            break
    return results


async def run_sweep(
    settings: LoadSettings,
    concurrencies: Sequence[int],
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> list[BenchmarkResult]:
    """The same settings at each concurrency in turn (`run_series` over a list)."""
    points = [replace(settings, concurrency=c) for c in concurrencies]
    return await run_series(_plan_list(points), settings.num_requests * len(points), progress, cancel)


def _run_loop(coro: Any) -> Any:
    # uvloop, when installed, roughly halves the client's per-chunk CPU (measured: 256 streams, 1.7 s -> 1.1 s
    # of CPU and half the TTFT error); the standard loop is the fallback so the dependency stays optional.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _run_in_thread(
    make: Callable[[ProgressCallback, CancelFlag], Any],
    progress: ProgressCallback | None,
    cancel: CancelFlag | None,
    poll_s: float,
) -> Any:
    """Run `make(progress, cancel)` on an event loop in a worker thread; call back in the caller's thread.

    Django refuses ORM calls from a thread with a running event loop, and Celery tasks and management commands
    want to write progress and read a cancel flag from the database; so the loop gets a thread of its own and
    this thread relays progress events (all of them, in order) and polls `cancel.is_set()` every `poll_s`.
    """
    events: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    stop = threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = _run_loop(make(lambda done, total: events.put((done, total)), stop))
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    def relay() -> None:
        while True:
            try:
                done, total = events.get_nowait()
            except queue.Empty:
                return
            if progress is not None:
                progress(done, total)

    worker = threading.Thread(target=work, name="loadgen", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(poll_s)
            relay()
            if cancel is not None and not stop.is_set() and cancel.is_set():
                stop.set()
    except BaseException:
        stop.set()  # e.g. Ctrl-C in a management command: stop the requests before leaving
        worker.join(30)
        raise
    relay()
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_benchmark_sync(
    settings: LoadSettings, progress: ProgressCallback | None = None, cancel: CancelFlag | None = None
) -> BenchmarkResult:
    """`run_benchmark` for synchronous callers (Celery tasks, management commands).

    The requests run on their own event loop (uvloop when installed) in a worker thread; `progress` is called
    and `cancel.is_set()` polled in the calling thread, so both may use the Django ORM.
    """
    return _run_in_thread(
        lambda p, c: run_benchmark(settings, p, c), progress, cancel, max(0.05, settings.progress_interval_s)
    )


def run_sweep_sync(
    settings: LoadSettings,
    concurrencies: Sequence[int],
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> list[BenchmarkResult]:
    """`run_sweep` for synchronous callers, with the same threading as `run_benchmark_sync`."""
    return _run_in_thread(
        lambda p, c: run_sweep(settings, concurrencies, p, c),
        progress,
        cancel,
        max(0.05, settings.progress_interval_s),
    )


def run_series_sync(
    plan: Callable[[list[BenchmarkResult]], LoadSettings | None],
    total: int,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    poll_s: float = 0.25,
) -> list[BenchmarkResult]:
    """`run_series` for synchronous callers, with the same threading as `run_benchmark_sync`.

    `plan` runs on the load generator's thread: it must not touch the database.
    """
    return _run_in_thread(lambda p, c: run_series(plan, total, p, c), progress, cancel, max(0.05, poll_s))
