"""Our load generator beside an established one, both against the same simulator with a known truth.

Starts the devcluster inference simulator in its own process, told a constant TTFT and ITL (default 200 ms and
20 ms; latency does not grow with load below `--max-num-seqs`, set far above the highest level), and at each
concurrency level (default 64, 256, 1024) runs first our client (`deployments.loadgen.run_benchmark_sync`, in
this process) and then the peer client, NVIDIA AIPerf, with the same workload: the same prompt and output token
counts (`ignore_eos`, so every stream is exactly that long), the same closed-loop concurrency, the same warm-up
(one wave of `concurrency` requests, not counted), the first wave spread over the same ramp-up, and the same
number of measured requests (`waves` x concurrency).  It prints one table: for each client and level the
requests it ran and failed, and the mean, p50 and p99 of TTFT and ITL with their error against the truth.

    .venv/bin/python benchmarks/peer_compare.py [--levels 64,256,1024] [--waves 3] [--ttft-ms 200] [--itl-ms 20]
        [--input-tokens 32] [--output-tokens 16] [--processes N] [--peer-workers N]

Why AIPerf: of the peers the issue names, it is the one that installs from PyPI without GPU wheels on the
project's Python (guidellm requires torch, whose Linux wheels pull the CUDA runtime; inference-perf needs
Python >= 3.12; `vllm bench serve` comes with vLLM itself).  It is installed from the pinned
`benchmarks/peer-requirements.txt` into its own venv (`var/peer-venv`, created on first use, reused while its
version matches the pin), never into the project's `.venv`.

Same numbers, same arithmetic: both clients' statistics come from their per-request records (ours from
`RequestRecord`, AIPerf's from its `profile_export.jsonl`, profiling phase only) through the same function
(`benchstats.describe`).  ITL is every gap between content chunks (one token per chunk here), which is our ITL
and AIPerf's `inter_chunk_latency`; AIPerf's own "Inter Token Latency" is a per-request average, whose mean is
the same but whose percentiles are narrower, so it is not what is compared.  TTFT is from the request's send to
its first content chunk for both.  The truth is one number per metric, so the mean, p50 and p99 all have it.

AIPerf needs a tokenizer to synthesise prompts, and a benchmark should not depend on downloading one from the
Hugging Face hub, so the script builds a local one (a word-level vocabulary over AIPerf's own prompt corpus,
split with the simulator's counting rule `\\w+|[^\\w\\s]`): an N-token AIPerf prompt is then exactly N prompt
tokens for the simulator, and `--use-server-token-count` takes output token counts from the server's usage, as
ours does.

A client that cannot keep up sends late rather than failing, and the server then sees fewer streams than asked
for, which flatters its TTFT: so each row also shows how many streams were really in flight on average, the
mean send lag (from when a request was due, i.e. a stream freed up, to its send: AIPerf's credit-to-start, our
`RequestRecord.scheduled`, when the load generator records it) and the mean TTFT counted from when it was due.

Both clients share the machine with the simulator: each client's error includes what it costs the simulator
to keep up, the same for both.  AIPerf runs as several processes (controller, dataset, timing, workers, record
processors) and sizes its worker pool from the CPU count; `--peer-workers` overrides it.  The table says how
many worker processes each client used.  On a shared 2-core machine other work moves the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments import benchstats  # noqa: E402
from deployments.loadgen import LoadSettings, RequestRecord, run_benchmark_sync  # noqa: E402

PEER = "aiperf"
REQUIREMENTS = ROOT / "benchmarks" / "peer-requirements.txt"
MODEL = "bench"

# Run with the peer venv's Python: a tokenizer that counts like the simulator, with a vocabulary of every word
# and punctuation mark in AIPerf's prompt corpus (so decoded prompts carry no unknown-token markers).
TOKENIZER_SCRIPT = r"""
import re, string, sys
from pathlib import Path
import aiperf
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

corpus = Path(aiperf.__file__).parent / "dataset" / "generator" / "assets" / "shakespeare.txt"
rule = r"\w+|[^\w\s]"
words = set(re.findall(rule, corpus.read_text(encoding="utf-8"))) | set(string.punctuation)
vocab = {"[UNK]": 0, **{w: i for i, w in enumerate(sorted(words), start=1)}}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(rule), behavior="isolated")]
)
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(sys.argv[1])
"""


@dataclass
class Workload:
    """What both clients send at one level; the simulator's truth is `ttft_ms` and `itl_ms`."""

    concurrency: int
    requests: int
    warmup: int
    input_tokens: int
    output_tokens: int
    ramp_up_s: float
    ttft_ms: float
    itl_ms: float
    timeout_s: float = 120.0


@dataclass
class ClientRun:
    """One client's records at one level, reduced to what the table needs (milliseconds)."""

    client: str
    concurrency: int
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    # (sent, finished) of every request, seconds on the client's clock: how many streams were really in flight.
    spans: list[tuple[float, float]] = field(default_factory=list)
    # Send lag of every request (ms): from when the client was due to send it (a slot freed up) to the send.
    lags_ms: list[float] = field(default_factory=list)
    workers: int = 1
    load: float = 0.0  # the machine's 1-minute load average when the run started
    note: str = ""

    @property
    def requests(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> float | None:
        """Mean streams in flight over the run: busy time of all requests over the run's length."""
        if not self.spans:
            return None
        length = max(e for _, e in self.spans) - min(s for s, _ in self.spans)
        return sum(e - s for s, e in self.spans) / length if length > 0 else None

    @property
    def ttft_from_scheduled_ms(self) -> list[float]:
        """TTFT counted from when the request was due, when every successful request's lag is known."""
        if not self.lags_ms or len(self.lags_ms) != len(self.ttft_ms):
            return []
        return [t + lag for t, lag in zip(self.ttft_ms, self.lags_ms, strict=True)]


# --------------------------------------------------------------------------- the peer client
def pinned_version(requirements: Path = REQUIREMENTS, package: str = PEER) -> str:
    """The version of `package` pinned in the requirements file."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise SystemExit(f"{requirements} pins no {package} version")


def peer_version(venv: Path) -> str | None:
    exe = venv / "bin" / PEER
    if not exe.exists():
        return None
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def ensure_peer_venv(venv: Path) -> Path:
    """`venv/bin/aiperf` at the pinned version, creating or refreshing the venv from the requirements file."""
    want = pinned_version()
    if peer_version(venv) == want:
        return venv / "bin" / PEER
    print(f"installing {PEER} {want} into {venv} (pinned in {REQUIREMENTS.relative_to(ROOT)})", flush=True)
    if not (venv / "bin" / "python").exists():
        # The interpreter the project's venv was made from, not the venv itself: the peer's packages stay apart.
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True
    )
    got = peer_version(venv)
    if got != want:
        raise SystemExit(f"{venv} has {PEER} {got}, not the pinned {want}")
    return venv / "bin" / PEER


def build_tokenizer(venv: Path, out: Path) -> Path:
    if not (out / "tokenizer.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", TOKENIZER_SCRIPT, str(out)],
            check=True,
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return out


def peer_env() -> dict[str, str]:
    # The tokenizer is a local directory, so nothing is fetched from the hub.  HF_HUB_OFFLINE is not set:
    # AIPerf 0.13 then looks every tokenizer name up in the hub cache and refuses a local path.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_HUB_DISABLE_TELEMETRY": "1"}


def peer_command(
    exe: Path, url: str, work: Workload, tokenizer: Path, artifacts: Path, workers: int | None = None
) -> list[str]:
    """`aiperf profile` with the workload fixed exactly: no length spread, closed loop, server token counts."""
    argv = [
        str(exe), "profile",
        "--model", MODEL,
        "--url", url,
        "--endpoint-type", "completions",
        "--streaming",
        "--concurrency", str(work.concurrency),
        "--request-count", str(work.requests),
        "--warmup-request-count", str(work.warmup),
        "--isl", str(work.input_tokens), "--isl-stddev", "0",
        "--osl", str(work.output_tokens), "--osl-stddev", "0",
        "--extra-inputs", "ignore_eos:true",
        "--use-server-token-count",
        "--tokenizer", str(tokenizer),
        "--request-timeout-seconds", f"{work.timeout_s:g}",
        "--random-seed", "0",
        "--ui", "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--artifact-dir", str(artifacts),
    ]  # fmt: skip
    if work.ramp_up_s > 0:
        argv += ["--concurrency-ramp-duration", f"{work.ramp_up_s:g}"]
    if workers:
        argv += ["--workers-max", str(workers)]
    return argv


def parse_peer_records(lines: list[str] | str, concurrency: int, client: str = PEER) -> ClientRun:
    """AIPerf's per-request export (one JSON object a line) → the profiling phase's TTFTs, ITL gaps and errors."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    run = ClientRun(client, concurrency)
    workers: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        meta = rec.get("metadata") or {}
        if meta.get("benchmark_phase") != "profiling":
            continue  # warm-up records are exported too
        if meta.get("worker_id"):
            workers.add(meta["worker_id"])
        start, end = meta.get("request_start_ns"), meta.get("request_end_ns")
        if start is not None and end is not None:
            run.spans.append((start / 1e9, end / 1e9))
        metrics = rec.get("metrics") or {}
        ttft = (metrics.get("time_to_first_token") or {}).get("value")
        if rec.get("error") or ttft is None or meta.get("was_cancelled"):
            run.failed += 1
            err = rec.get("error") or {}
            run.errors[f"{err.get('code', '')} {err.get('type', 'no first token')}".strip()] += 1
            continue
        run.succeeded += 1
        run.ttft_ms.append(float(ttft))
        # AIPerf's timing service issues a "credit" when a request is due; a worker sends when it gets to it.
        if meta.get("credit_issued_ns") is not None and start is not None:
            run.lags_ms.append((start - meta["credit_issued_ns"]) / 1e6)
        run.itl_ms.extend(float(g) for g in (metrics.get("inter_chunk_latency") or {}).get("value") or [])
    run.workers = max(1, len(workers))
    return run


def run_peer(
    exe: Path, url: str, work: Workload, tokenizer: Path, out: Path, workers: int | None
) -> ClientRun:
    artifacts = out / f"{PEER}-c{work.concurrency}"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    log = artifacts / "console.log"
    with log.open("wb") as fh:
        proc = subprocess.run(
            peer_command(exe, url, work, tokenizer, artifacts, workers),
            cwd=artifacts,
            env=peer_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=False,
        )
    records = artifacts / "profile_export.jsonl"
    if proc.returncode != 0 or not records.exists():
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        run = ClientRun(
            f"{PEER} {pinned_version()}", work.concurrency, note=f"exit {proc.returncode}, see {log}"
        )
        print("\n".join(tail), file=sys.stderr)
        return run
    return parse_peer_records(
        records.read_text(encoding="utf-8"), work.concurrency, f"{PEER} {pinned_version()}"
    )


# --------------------------------------------------------------------------- our client
def our_processes_option() -> bool:
    """Whether this checkout's load generator can spread streams over processes (`LoadSettings.processes`)."""
    return "processes" in {f.name for f in dataclasses.fields(LoadSettings)}


def from_records(records: list[RequestRecord], concurrency: int, client: str) -> ClientRun:
    run = ClientRun(client, concurrency)
    lags: list[float] = []
    for r in records:
        if r.e2e is not None:
            run.spans.append((r.start, r.start + r.e2e))
        if r.success and r.ttft is not None:
            run.succeeded += 1
            run.ttft_ms.append(r.ttft * 1000.0)
            run.itl_ms.extend(g * 1000.0 for g in r.itl)
            # `scheduled` (when the request was due) exists in load generators that record their send lag.
            scheduled = getattr(r, "scheduled", None)
            if scheduled is not None:
                lags.append(max(0.0, r.start - scheduled) * 1000.0)
        else:
            run.failed += 1
            run.errors[r.error or "unknown error"] += 1
    if len(lags) == run.succeeded:
        run.lags_ms = lags
    return run


def run_ours(url: str, work: Workload, processes: int) -> ClientRun:
    extra = {"processes": processes} if processes > 1 else {}
    settings = LoadSettings(
        base_url=url,
        model=MODEL,
        endpoint="completions",
        num_requests=work.requests,
        concurrency=work.concurrency,
        input_tokens=work.input_tokens,
        output_tokens=work.output_tokens,
        warmup_requests=work.warmup,
        ramp_up_s=work.ramp_up_s,
        timeout_s=work.timeout_s,
        idle_timeout_s=30,
        **extra,
    )
    result = run_benchmark_sync(settings)
    run = from_records(result.requests, work.concurrency, "budcluster")
    run.failed += work.requests - len(result.requests)  # never finished (a partial run)
    run.workers = processes
    return run


# --------------------------------------------------------------------------- the table
def error_pct(measured: float | None, truth: float) -> float | None:
    return None if measured is None else (measured - truth) / truth * 100.0


def stats(values: list[float]) -> dict[str, float | None]:
    d = benchstats.describe(values)
    return {"mean": d["mean"], "p50": d["median"], "p99": d["p99"]}


def _cell(value: float | None, truth: float) -> str:
    if value is None:
        return f"{'-':>8} {'-':>7}"
    return f"{value:>8.1f} {error_pct(value, truth):>+7.1f}"


HEADER = (
    f"{'client':<14} {'streams':>7} {'procs':>5} {'load':>5} {'requests':>8} {'failed':>6} {'in flight':>9} "
    f"{'lag ms':>7} | "
    + " ".join(f"{name:>8} {'err %':>7}" for name in ("TTFT avg", "TTFT p50", "TTFT p99"))
    + " | "
    + " ".join(f"{name:>8} {'err %':>7}" for name in ("ITL avg", "ITL p50", "ITL p99"))
    + f" | {'sched TTFT':>10} {'err %':>7}"
)


def table_row(run: ClientRun, ttft_truth: float, itl_truth: float) -> str:
    t, i = stats(run.ttft_ms), stats(run.itl_ms)
    lag = stats(run.lags_ms)["mean"]
    sched = stats(run.ttft_from_scheduled_ms)["mean"]
    in_flight = run.in_flight
    row = (
        f"{run.client:<14} {run.concurrency:>7} {run.workers:>5} {run.load:>5.1f} {run.requests:>8} {run.failed:>6} "
        + (f"{in_flight:>9.0f} " if in_flight is not None else f"{'-':>9} ")
        + (f"{lag:>7.0f} | " if lag is not None else f"{'-':>7} | ")
        + " ".join(_cell(t[k], ttft_truth) for k in ("mean", "p50", "p99"))
        + " | "
        + " ".join(_cell(i[k], itl_truth) for k in ("mean", "p50", "p99"))
        + " | "
        + (
            f"{sched:>10.1f} {error_pct(sched, ttft_truth):>+7.1f}"
            if sched is not None
            else f"{'-':>10} {'-':>7}"
        )
    )
    return row + (f"  {run.note}" if run.note else "")


# --------------------------------------------------------------------------- the run
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(port: int, ttft_ms: float, itl_ms: float, max_num_seqs: int) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "devcluster.sim.inference",
        "--host", "127.0.0.1", "--port", str(port), "--model", MODEL,
        "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--max-num-seqs", str(max_num_seqs),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the simulator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)  # polling the health endpoint until its deadline
    proc.kill()
    raise SystemExit("the simulator did not start within 30 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="64,256,1024", help="concurrent streams, comma-separated")
    p.add_argument("--waves", type=int, default=3, help="measured requests per level = waves x streams")
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--ramp-up-s", type=float, default=None, help="first wave spread (default: one TTFT)")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="our client's processes at 1,024+ streams, when the load generator has the option (default: CPUs)",
    )
    p.add_argument("--peer-workers", type=int, default=None, help="AIPerf --workers-max (default: its own)")
    p.add_argument("--peer-venv", type=Path, default=ROOT / "var" / "peer-venv")
    p.add_argument("--out", type=Path, default=ROOT / "var" / "peer-compare", help="AIPerf artifacts")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    # AIPerf runs in its artifact directory: every path handed to it must be absolute.
    args.peer_venv, args.out = args.peer_venv.resolve(), args.out.resolve()
    ramp = args.ttft_ms / 1000.0 if args.ramp_up_s is None else args.ramp_up_s

    exe = ensure_peer_venv(args.peer_venv)
    tokenizer = build_tokenizer(args.peer_venv, args.out / "tokenizer")
    can_spread = our_processes_option()
    port = free_port()
    proc = start_simulator(port, args.ttft_ms, args.itl_ms, max(4096, 4 * max(levels)))
    url = f"http://127.0.0.1:{port}"
    print(
        f"simulator truth: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms (constant); {args.input_tokens} prompt "
        f"and {args.output_tokens} output tokens; completions, streamed; warm-up one wave, measured {args.waves} "
        f"waves; ramp-up {ramp:g} s; peer {PEER} {pinned_version()}; our client "
        f"{'spreads 1,024+ streams over processes' if can_spread else 'has no processes option: one process'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows: list[ClientRun] = []
    try:
        for c in levels:
            work = Workload(
                concurrency=c,
                requests=c * args.waves,
                warmup=c,
                input_tokens=args.input_tokens,
                output_tokens=args.output_tokens,
                ramp_up_s=ramp,
                ttft_ms=args.ttft_ms,
                itl_ms=args.itl_ms,
            )
            procs = (args.processes or os.cpu_count() or 1) if can_spread and c >= 1024 else 1
            for client in ("ours", PEER):
                load = os.getloadavg()[0]
                if client == "ours":
                    run = run_ours(url, work, procs)
                else:
                    run = run_peer(exe, url, work, tokenizer, args.out, args.peer_workers)
                run.load = load
                rows.append(run)
                print(f"  {table_row(run, args.ttft_ms, args.itl_ms)}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print()
    print(HEADER)
    print("-" * len(HEADER))
    for run in rows:
        print(table_row(run, args.ttft_ms, args.itl_ms))
    for run in rows:
        for message, count in run.errors.most_common(3):
            print(f"{run.client} at {run.concurrency}: {count} x {message}")
    print(
        f"\nerr % = (measured - truth) / truth; truth TTFT {args.ttft_ms:g} ms and ITL {args.itl_ms:g} ms for "
        f"every request and gap. procs = worker processes that sent requests; load = the machine's 1-minute load "
        f"average as the run started ({os.cpu_count()} CPUs); in flight = mean streams actually in flight (all "
        f"requests' busy time over the run's length); lag ms = mean time from when a request was due (a stream "
        f"freed up) to its send; sched TTFT = mean TTFT counted from when it was due. Load average now "
        f"{os.getloadavg()[0]:.2f}."
    )


if __name__ == "__main__":
    main()
