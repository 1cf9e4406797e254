"""Statistics of a benchmark run, in the fields the service stores, plus a compact per-request encoding.

`summarize()` turns a `loadgen.BenchmarkResult` into one flat dict (JSON-ready, one key per stored figure):

- ``duration_s``, ``successful_requests``, ``failed_requests``, ``total_input_tokens``, ``total_output_tokens``,
  ``request_throughput`` (successful requests/s), ``input_throughput`` and ``output_throughput`` (tokens/s);
- for each metric ``ttft_ms``, ``tpot_ms``, ``itl_ms``, ``e2e_ms`` and ``output_throughput_per_user``
  (output tokens / E2E of each request, tokens/s): ``mean_<m>``, ``median_<m>``, ``p25_<m>``, ``p75_<m>``,
  ``p95_<m>``, ``p99_<m>``, ``min_<m>``, ``max_<m>`` — None when no successful request gave a value;
- ``errors``: [{"message", "count"}] most frequent first, so failures are shown, not averaged away;
- ``partial``, ``concurrency``, ``request_rate`` (None = unlimited), ``passed`` (>= 1 success, and with
  `targets` every target held: then also ``targets`` {key: {target, limit, measured, passed}} and
  ``target_margin``; see `evaluate_targets`).

Only successful requests feed the latency and token figures (a failed request has no TTFT worth averaging);
ITL pools the gaps of every successful request, as vLLM's benchmark does.  Percentiles interpolate linearly
between closest ranks, as numpy's default (and vLLM's benchmark, which uses it) does: the standard library's
``statistics.quantiles(method="inclusive")`` is that same definition, so numpy is not needed here.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from deployments.loadgen import BenchmarkResult, RequestRecord

METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "output_throughput_per_user")
STATS = ("mean", "median", "p25", "p75", "p95", "p99", "min", "max")
_PERCENTILES = {"p25": 25, "p75": 75, "p95": 95, "p99": 99}
TARGET_KEYS = ("ttft_ms", "e2e_ms", "throughput_per_user")
DEFAULT_MARGIN = 0.5
SAMPLES_VERSION = 1


def percentile(values: Sequence[float], q: int) -> float:
    """q-th percentile (1..99) of `values`, linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    return _percentiles(values)[q - 1]


def _percentiles(values: Sequence[float]) -> list[float]:
    """The 1st..99th percentiles (index q - 1)."""
    if len(values) == 1:
        # statistics.quantiles wants two points before Python 3.13; every percentile of one value is that value.
        return [float(values[0])] * 99
    return statistics.quantiles(values, n=100, method="inclusive")


def describe(values: Iterable[float]) -> dict[str, float | None]:
    """mean, median, p25, p75, p95, p99, min, max of `values` (all None when empty)."""
    data = list(values)
    if not data:
        return dict.fromkeys(STATS)
    cuts = _percentiles(data)
    out: dict[str, float | None] = {"mean": statistics.fmean(data), "median": statistics.median(data)}
    for name, q in _PERCENTILES.items():
        out[name] = cuts[q - 1]
    out["min"], out["max"] = min(data), max(data)
    return {k: out[k] for k in STATS}


def metric_values(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """Per-metric samples in display units (ms, tokens/s) from the successful records."""
    ok = [r for r in records if r.success]
    ttft = [r.ttft * 1000.0 for r in ok if r.ttft is not None]
    tpot = [t * 1000.0 for r in ok if (t := r.tpot) is not None]
    itl = [g * 1000.0 for r in ok for g in r.itl]
    e2e = [r.e2e * 1000.0 for r in ok if r.e2e is not None]
    per_user = [r.output_tokens / r.e2e for r in ok if r.e2e and r.output_tokens]
    return {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "itl_ms": itl,
        "e2e_ms": e2e,
        "output_throughput_per_user": per_user,
    }


def error_counts(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    counts = Counter(r.error or "unknown error" for r in records if not r.success)
    return [{"message": m, "count": n} for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def summarize_records(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The stored figures for `records` measured over `duration_s` seconds (see the module docstring)."""
    ok = [r for r in records if r.success]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    rate = (lambda x: x / duration_s) if duration_s > 0 else (lambda _x: 0.0)
    out: dict[str, Any] = {
        "duration_s": duration_s,
        "successful_requests": len(ok),
        "failed_requests": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": rate(len(ok)),
        "input_throughput": rate(total_in),
        "output_throughput": rate(total_out),
    }
    for metric, values in metric_values(records).items():
        for stat, value in describe(values).items():
            out[f"{stat}_{metric}"] = value
    out["errors"] = error_counts(records)
    return out


def evaluate_targets(
    summary: dict[str, Any], targets: dict[str, float | None], margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """Pass/fail of `targets` against a summary, as the original service judged a deployment's benchmark.

    A run passes when at least one request succeeded and every given target holds within `margin`:
    mean TTFT <= ttft_ms * (1 + margin), mean E2E <= e2e_ms * (1 + margin), and mean per-user output
    throughput >= throughput_per_user * (1 - margin).  Returns {"passed", "margin", "checks": {key: {...}}}.
    """
    unknown = set(targets) - set(TARGET_KEYS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; expected some of {list(TARGET_KEYS)}")
    checks: dict[str, dict[str, Any]] = {}
    specs = {
        "ttft_ms": ("mean_ttft_ms", "max"),
        "e2e_ms": ("mean_e2e_ms", "max"),
        "throughput_per_user": ("mean_output_throughput_per_user", "min"),
    }
    for key, target in targets.items():
        if target is None:
            continue
        field_name, bound = specs[key]
        measured = summary.get(field_name)
        limit = target * (1 + margin) if bound == "max" else target * (1 - margin)
        ok = measured is not None and (measured <= limit if bound == "max" else measured >= limit)
        checks[key] = {"target": target, "limit": limit, "measured": measured, "passed": ok}
    passed = summary.get("successful_requests", 0) >= 1 and all(c["passed"] for c in checks.values())
    return {"passed": passed, "margin": margin, "checks": checks}


def summarize(
    result: BenchmarkResult, targets: dict[str, float | None] | None = None, margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """Everything stored for one run: figures, errors, `partial`, `concurrency`, and target verdicts."""
    out = summarize_records(result.requests, result.duration_s)
    out["partial"] = result.partial
    out["concurrency"] = result.settings.concurrency
    out["request_rate"] = None if math.isinf(result.settings.request_rate) else result.settings.request_rate
    if targets:
        verdict = evaluate_targets(out, targets, margin)
        out["targets"] = verdict["checks"]
        out["target_margin"] = margin
        out["passed"] = verdict["passed"]
    else:
        out["passed"] = out["successful_requests"] >= 1
    return out


# --------------------------------------------------------------------------- compact samples
def _ms(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value * 1000.0, digits)


def encode_samples(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Per-request samples as columns (JSON-ready, a few bytes per token), for storage and plots.

    Columns are parallel lists in send order: ``start_ms``, ``ttft_ms``, ``e2e_ms`` (ms, 2 decimals or None),
    ``input_tokens``, ``output_tokens``, ``success`` (0/1), ``error`` (index into ``errors`` or None) and
    ``itl_ms`` (per request, the gaps rounded to whole ms — enough for distributions; the summary keeps the
    exact statistics).
    """
    errors: dict[str, int] = {}
    error_col: list[int | None] = []
    for r in records:
        if r.success:
            error_col.append(None)
        else:
            error_col.append(errors.setdefault(r.error or "unknown error", len(errors)))
    return {
        "version": SAMPLES_VERSION,
        "start_ms": [round(r.start * 1000.0, 2) for r in records],
        "ttft_ms": [_ms(r.ttft) for r in records],
        "e2e_ms": [_ms(r.e2e) for r in records],
        "input_tokens": [r.input_tokens for r in records],
        "output_tokens": [r.output_tokens for r in records],
        "success": [1 if r.success else 0 for r in records],
        "error": error_col,
        "errors": list(errors),
        "itl_ms": [[round(g * 1000.0) for g in r.itl] for r in records],
    }


def decode_samples(samples: dict[str, Any]) -> list[RequestRecord]:
    """Records back from `encode_samples` output (times at the stored precision)."""
    if samples.get("version") != SAMPLES_VERSION:
        raise ValueError(f"unsupported samples version {samples.get('version')!r}")
    errors = samples["errors"]

    def sec(v: float | None) -> float | None:
        return None if v is None else v / 1000.0

    out = []
    for i, start in enumerate(samples["start_ms"]):
        err = samples["error"][i]
        out.append(
            RequestRecord(
                start=start / 1000.0,
                ttft=sec(samples["ttft_ms"][i]),
                itl=[g / 1000.0 for g in samples["itl_ms"][i]],
                e2e=sec(samples["e2e_ms"][i]),
                input_tokens=samples["input_tokens"][i],
                output_tokens=samples["output_tokens"][i],
                success=bool(samples["success"][i]),
                error=None if err is None else errors[err],
            )
        )
    return out
