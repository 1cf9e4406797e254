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

Serving to an SLO (``slo`` given to `summarize`; see `evaluate_slo`):

- ``slo``: {targets, min_share, met, total, goodput, attainment, shares: {key: share}, passed}; ``goodput`` and
  ``slo_attainment`` copied to the top level.  A request meets the SLO when it succeeded and each given target
  holds: TTFT and E2E measured from its **scheduled** send time (what a user arriving then waits), TPOT as is;
- ``mean_ttft_from_scheduled_ms`` ... and ``..._e2e_from_scheduled_ms`` (all eight statistics) whatever the SLO;
- ``client``: the client's own health (`client_health`): send lag (scheduled to actual send), event-loop delay,
  CPU per load process, and ``valid`` / ``invalid_reason`` at the top level: a run whose client was the
  bottleneck is flagged, with the reason, because its latencies are partly the client's.

Repetitions (`summarize_repetitions`) pool the requests of every repetition for the percentiles and add
``repetitions`` (each repetition's key figures) and ``confidence``: a Student-t interval over the per-repetition
values (`confidence_interval`).  Rate sweeps end in ``capacity`` (`capacity_at_slo`).

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
SCHEDULED_METRICS = ("ttft_from_scheduled_ms", "e2e_from_scheduled_ms")
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")
DEFAULT_MIN_SHARE = 0.9  # DistServe's "90 % of requests within the SLO"
DEFAULT_LAG_LIMIT_MS = 50.0
CPU_LIMIT = 0.9  # of one core: a load process busier than this is saturated
DEFAULT_CONFIDENCE = 0.95
# Per-repetition figures that get a confidence interval.
CI_METRICS = (
    "mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "mean_e2e_ms", "mean_ttft_from_scheduled_ms",
    "mean_e2e_from_scheduled_ms", "request_throughput", "output_throughput", "goodput", "slo_attainment",
)  # fmt: skip
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
    ok_records = [r for r in records if r.success]
    scheduled = {
        "ttft_from_scheduled_ms": [
            v * 1000.0 for r in ok_records if (v := r.ttft_from_scheduled) is not None
        ],
        "e2e_from_scheduled_ms": [v * 1000.0 for r in ok_records if (v := r.e2e_from_scheduled) is not None],
    }
    for metric, values in scheduled.items():
        for stat, value in describe(values).items():
            out[f"{stat}_{metric}"] = value
    out["errors"] = error_counts(records)
    return out


# --------------------------------------------------------------------------- SLOs, goodput, capacity
def request_meets(record: RequestRecord, slo: dict[str, float]) -> dict[str, bool]:
    """Which of the SLO's targets (ms) one request met.  A failed request meets none.

    TTFT and E2E count from the scheduled send time; a request without a TTFT (embeddings: the answer is one
    piece) is judged on its E2E for TTFT too; a one-token answer has no TPOT to miss.
    """
    out: dict[str, bool] = {}
    for key, limit in slo.items():
        if not record.success:
            out[key] = False
        elif key == "ttft_ms":
            value = record.ttft_from_scheduled
            value = record.e2e_from_scheduled if value is None else value
            out[key] = value is not None and value * 1000.0 <= limit
        elif key == "tpot_ms":
            tpot = record.tpot
            out[key] = tpot is None or tpot * 1000.0 <= limit
        elif key == "e2e_ms":
            value = record.e2e_from_scheduled
            out[key] = value is not None and value * 1000.0 <= limit
        else:
            raise ValueError(f"unknown SLO target {key!r}; expected some of {list(SLO_KEYS)}")
    return out


def evaluate_slo(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: dict[str, float],
    min_share: float = DEFAULT_MIN_SHARE,
) -> dict[str, Any]:
    """Goodput (requests/s meeting every target), the share of requests meeting all and each, and whether the
    run meets the SLO (at least `min_share` of its requests met every target).  Failed requests count as
    missing: a server that drops requests does not raise its attainment by it."""
    targets = {k: float(v) for k, v in slo.items() if v is not None}
    total = len(records)
    met = 0
    per = dict.fromkeys(targets, 0)
    for r in records:
        checks = request_meets(r, targets)
        for key, ok in checks.items():
            per[key] += ok
        met += all(checks.values())
    attainment = met / total if total else 0.0
    return {
        "targets": targets,
        "min_share": min_share,
        "measured_from": "scheduled send",
        "met": met,
        "total": total,
        "goodput": met / duration_s if duration_s > 0 else 0.0,
        "attainment": attainment,
        "shares": {k: (n / total if total else 0.0) for k, n in per.items()},
        "passed": total > 0 and attainment >= min_share,
    }


def capacity_at_slo(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The highest offered rate up to which every point met the SLO ("capacity at SLO").

    Points are taken in ascending rate; the first that misses the SLO ends the climb (a higher rate that
    happens to pass after a miss is noise, not capacity), and so does a point whose client was the bottleneck
    (its latencies are partly the client's: nothing can be concluded from it or beyond it).
    """
    ranked = sorted((p for p in points if p.get("request_rate")), key=lambda p: p["request_rate"])
    best: dict[str, Any] | None = None
    limited = "every rate met the SLO"
    for p in ranked:
        if p.get("valid") is False:
            limited = (
                f"the client was the bottleneck at {p['request_rate']:g} req/s: {p.get('invalid_reason')}"
            )
            break
        if not (p.get("slo") or {}).get("passed"):
            slo = p.get("slo") or {}
            limited = (
                f"{slo.get('attainment', 0.0):.1%} of requests met the SLO at {p['request_rate']:g} req/s "
                f"(needs {slo.get('min_share', DEFAULT_MIN_SHARE):.0%})"
            )
            break
        best = p
    return {
        "rate": best["request_rate"] if best else None,
        "goodput": best.get("goodput") if best else None,
        "limited_by": limited,
        "rates": [p["request_rate"] for p in ranked],
    }


# --------------------------------------------------------------------------- the client's own health
def client_health(result: BenchmarkResult, lag_limit_ms: float = DEFAULT_LAG_LIMIT_MS) -> dict[str, Any]:
    """Was the client the bottleneck?  Send lag, event-loop delay and CPU of each load process, with reasons.

    - send lag (scheduled to actual send): a paced run whose requests leave late (too few concurrency slots
      for the rate, or a loop too busy to send on time) measures from the wrong start — vLLM issue 54101: p99
      TTFT 507 ms from the actual send, 3,330 ms from the scheduled one;
    - event-loop delay (how late a 10 ms timer fires): every chunk is stamped that late;
    - CPU: a load process using >= 90 % of a core has no headroom left (spread the streams: ``processes``).
    The p99 of the first two must stay within `lag_limit_ms`.
    """
    lags = [r.send_lag * 1000.0 for r in result.requests]
    delays = [d * 1000.0 for d in result.loop_delays]
    cpu = [c["cpu_s"] / c["wall_s"] for c in result.cpu if c.get("wall_s")]
    lag, loop = describe(lags), describe(delays)
    reasons = []
    if lag["p99"] is not None and lag["p99"] > lag_limit_ms:
        reasons.append(
            f"p99 send lag {lag['p99']:.0f} ms > {lag_limit_ms:g} ms: requests left later than scheduled "
            "(too few concurrency slots for the rate, or a busy client)"
        )
    if loop["p99"] is not None and loop["p99"] > lag_limit_ms:
        reasons.append(
            f"p99 event-loop delay {loop['p99']:.0f} ms > {lag_limit_ms:g} ms: the client stamped chunks late"
        )
    if cpu and max(cpu) >= CPU_LIMIT:
        reasons.append(
            f"a load process used {max(cpu):.0%} of a core (>= {CPU_LIMIT:.0%}): the client was saturated; "
            "spread the streams over more processes"
        )

    def brief(d: dict[str, float | None]) -> dict[str, float | None]:
        return {k: d[k] for k in ("mean", "median", "p99", "max")}

    return {
        "processes": result.settings.processes,
        "send_lag_ms": brief(lag),
        "loop_delay_ms": brief(loop),
        "cpu_percent": [round(c * 100.0, 1) for c in cpu],
        "lag_limit_ms": lag_limit_ms,
        "valid": not reasons,
        "invalid_reasons": reasons,
    }


# --------------------------------------------------------------------------- confidence intervals
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method, as Numerical Recipes)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf` (bisection; the standard library has no t distribution and scipy is not needed)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be between 0 and 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def confidence_interval(values: Sequence[float], level: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Mean of `values` with its two-sided Student-t interval at `level` (n - 1 degrees of freedom).

    With one value there is no spread to estimate: ``low``/``high`` are None.
    """
    data = [float(v) for v in values if v is not None]
    n = len(data)
    if not n:
        return {
            "n": 0,
            "level": level,
            "mean": None,
            "stdev": None,
            "half_width": None,
            "low": None,
            "high": None,
        }
    mean = statistics.fmean(data)
    if n < 2:
        return {
            "n": 1,
            "level": level,
            "mean": mean,
            "stdev": None,
            "half_width": None,
            "low": None,
            "high": None,
        }
    stdev = statistics.stdev(data)
    half = t_quantile(0.5 + level / 2.0, n - 1) * stdev / math.sqrt(n)
    return {
        "n": n, "level": level, "mean": mean, "stdev": stdev, "half_width": half, "low": mean - half,
        "high": mean + half,
    }  # fmt: skip


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
    result: BenchmarkResult,
    targets: dict[str, float | None] | None = None,
    margin: float = DEFAULT_MARGIN,
    slo: dict[str, float] | None = None,
    min_share: float = DEFAULT_MIN_SHARE,
    lag_limit_ms: float = DEFAULT_LAG_LIMIT_MS,
) -> dict[str, Any]:
    """Everything stored for one run: figures, errors, `partial`, `concurrency`, target verdicts, the client's
    health (``client``, ``valid``, ``invalid_reason``) and, with `slo`, goodput and attainment."""
    out = summarize_records(result.requests, result.duration_s)
    out["partial"] = result.partial
    out["concurrency"] = result.settings.concurrency
    out["request_rate"] = None if math.isinf(result.settings.request_rate) else result.settings.request_rate
    health = client_health(result, lag_limit_ms)
    out["client"] = health
    out["valid"] = health["valid"]
    out["invalid_reason"] = "; ".join(health["invalid_reasons"])
    if slo:
        verdict = evaluate_slo(result.requests, result.duration_s, slo, min_share)
        out["slo"] = verdict
        out["goodput"] = verdict["goodput"]
        out["slo_attainment"] = verdict["attainment"]
    if targets:
        verdict = evaluate_targets(out, targets, margin)
        out["targets"] = verdict["checks"]
        out["target_margin"] = margin
        out["passed"] = verdict["passed"]
    else:
        out["passed"] = out["successful_requests"] >= 1
    return out


def pooled(results: Sequence[BenchmarkResult]) -> BenchmarkResult:
    """One result holding every repetition's requests, over the sum of their durations."""
    first = results[0]
    return BenchmarkResult(
        first.settings,
        [r for res in results for r in res.requests],
        sum(res.duration_s for res in results),
        partial=any(res.partial for res in results),
        loop_delays=[d for res in results for d in res.loop_delays],
        cpu=[c for res in results for c in res.cpu],
    )


def summarize_repetitions(
    results: Sequence[BenchmarkResult], confidence: float = DEFAULT_CONFIDENCE, **kwargs: Any
) -> dict[str, Any]:
    """`summarize` of the pooled requests, plus each repetition's key figures and their confidence intervals.

    The interval is over per-repetition values (a repetition's mean TTFT, its goodput, ...), not over requests:
    requests of one run share its conditions and are not independent, repetitions are closer to it.
    """
    if len(results) == 1:
        return summarize(results[0], **kwargs)
    out = summarize(pooled(results), **kwargs)
    each = [summarize(r, **kwargs) for r in results]
    out["repetitions"] = [{k: s.get(k) for k in CI_METRICS if k in s} | {"valid": s["valid"]} for s in each]
    out["confidence"] = {
        k: confidence_interval([s[k] for s in each], confidence)
        for k in CI_METRICS
        if all(s.get(k) is not None for s in each)
    }
    # One repetition whose client was the bottleneck spoils the pooled figures too.
    bad = [f"repetition {i + 1}: {s['invalid_reason']}" for i, s in enumerate(each) if not s["valid"]]
    if bad and out["valid"]:
        out["valid"], out["invalid_reason"] = False, "; ".join(bad)
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
        "scheduled_ms": [None if r.scheduled is None else round(r.scheduled * 1000.0, 2) for r in records],
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
    scheduled = samples.get("scheduled_ms") or [None] * len(samples["start_ms"])  # absent before SLOs existed
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
                scheduled=sec(scheduled[i]),
            )
        )
    return out
