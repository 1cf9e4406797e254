"""Pictures of a benchmark run: PNG or SVG bytes from stored samples, rendered headless.

Plots are drawn on `matplotlib.figure.Figure` objects directly (never pyplot): no global figure registry, no
GUI backend, safe in web and Celery worker threads; `savefig` picks the Agg renderer for PNG and the SVG
renderer for SVG.  Inputs are what the service stores: the compact samples from `benchstats.encode_samples`
(or a list of `loadgen.RequestRecord`) and, for a sweep, the summaries from `benchstats.summarize`.

Kinds (`PLOT_KINDS`): ``ttft`` (TTFT histogram), ``itl`` (inter-token latency histogram), ``latency``
(TTFT and E2E of each request against its start time, failures marked), ``throughput`` (output and request
throughput against concurrency for a sweep), and for a request-rate sweep ``latency_vs_rate`` (median and p99
TTFT and E2E, from the scheduled send, against the offered rate, the SLO's targets as dashed lines) and
``goodput_vs_rate`` (achieved request throughput and goodput against the offered rate, with the confidence
interval of repeated runs as error bars and the capacity at SLO marked).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from deployments.benchstats import decode_samples
from deployments.loadgen import RequestRecord

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn: it costs ~0.7 s at every process start
    from matplotlib.figure import Figure

Format = Literal["png", "svg"]
PLOT_KINDS = ("ttft", "itl", "latency", "throughput", "latency_vs_rate", "goodput_vs_rate")
RATE_KINDS = ("latency_vs_rate", "goodput_vs_rate")
CONTENT_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
_SIZE = (7.0, 4.0)
_DPI = 100


def _records(samples: dict[str, Any] | Sequence[RequestRecord]) -> list[RequestRecord]:
    return decode_samples(samples) if isinstance(samples, dict) else list(samples)


def _render(fig: Figure, fmt: Format) -> bytes:
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"format must be one of {sorted(CONTENT_TYPES)}, not {fmt!r}")
    buf = io.BytesIO()
    # No creation date in the metadata: the same data gives the same bytes (cacheable, comparable).
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    # A fixed hash salt makes SVG element ids stable too.
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "budcluster"}):
        fig.savefig(buf, format=fmt, dpi=_DPI, metadata=metadata, bbox_inches="tight")
    return buf.getvalue()


def _figure(title: str) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _histogram(values: list[float], title: str, xlabel: str, fmt: Format) -> bytes:
    fig, ax = _figure(title)
    if values:
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="#4c72b0", edgecolor="white")
        mean = sum(values) / len(values)
        ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.1f} ms")
        ax.legend(loc="upper right")
    else:
        _empty(ax, "no successful requests")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _render(fig, fmt)


def ttft_histogram(samples: dict[str, Any] | Sequence[RequestRecord], fmt: Format = "png") -> bytes:
    """Distribution of time to first token over the successful requests."""
    values = [r.ttft * 1000.0 for r in _records(samples) if r.success and r.ttft is not None]
    return _histogram(values, "Time to first token", "TTFT (ms)", fmt)


def itl_histogram(samples: dict[str, Any] | Sequence[RequestRecord], fmt: Format = "png") -> bytes:
    """Distribution of the gaps between consecutive content chunks, pooled over successful requests."""
    values = [g * 1000.0 for r in _records(samples) if r.success for g in r.itl]
    return _histogram(values, "Inter-token latency", "ITL (ms)", fmt)


def latency_over_time(samples: dict[str, Any] | Sequence[RequestRecord], fmt: Format = "png") -> bytes:
    """TTFT and E2E latency of each request against when it was sent; failed requests marked on the axis."""
    records = _records(samples)
    ok = [r for r in records if r.success]
    fig, ax = _figure("Latency over the run")
    if ok:
        starts = [r.start for r in ok]
        ax.scatter(starts, [(r.e2e or 0.0) * 1000.0 for r in ok], s=8, label="E2E", color="#55a868")
        if any(r.ttft is not None for r in ok):
            pts = [(r.start, r.ttft * 1000.0) for r in ok if r.ttft is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, label="TTFT", color="#4c72b0")
    failed = [r.start for r in records if not r.success]
    if failed:
        ax.scatter(
            failed, [0.0] * len(failed), marker="x", s=20, color="#c44e52", label=f"failed ({len(failed)})"
        )
    if records:
        ax.legend(loc="upper left")
    else:
        _empty(ax, "no requests")
    ax.set_xlabel("request start (s)")
    ax.set_ylabel("latency (ms)")
    return _render(fig, fmt)


def throughput_vs_concurrency(summaries: Sequence[dict[str, Any]], fmt: Format = "png") -> bytes:
    """Output token throughput (left axis) and mean TTFT (right axis) for each concurrency of a sweep."""
    points = sorted(
        (s for s in summaries if s.get("concurrency") is not None), key=lambda s: s["concurrency"]
    )
    fig, ax = _figure("Throughput vs concurrency")
    if points:
        xs = [p["concurrency"] for p in points]
        ax.plot(
            xs,
            [p.get("output_throughput") or 0.0 for p in points],
            marker="o",
            color="#4c72b0",
            label="output tokens/s",
        )
        ax.set_ylabel("output throughput (tokens/s)")
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [p.get("mean_ttft_ms") or 0.0 for p in points],
            marker="s",
            linestyle="--",
            color="#c44e52",
            label="mean TTFT (ms)",
        )
        ax2.set_ylabel("mean TTFT (ms)")
        if len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left")
    else:
        _empty(ax, "no sweep results")
    ax.set_xlabel("concurrency")
    return _render(fig, fmt)


def _rate_points(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((s for s in summaries if s.get("request_rate")), key=lambda s: s["request_rate"])


def latency_vs_rate(summaries: Sequence[dict[str, Any]], fmt: Format = "png") -> bytes:
    """Median and p99 TTFT and E2E (from the scheduled send) per offered rate; the SLO targets dashed."""
    points = _rate_points(summaries)
    fig, ax = _figure("Latency vs offered rate (from the scheduled send)")
    if points:
        xs = [p["request_rate"] for p in points]
        series = (
            ("median_ttft_from_scheduled_ms", "TTFT median", "#4c72b0", "o", "-"),
            ("p99_ttft_from_scheduled_ms", "TTFT p99", "#4c72b0", "s", "--"),
            ("median_e2e_from_scheduled_ms", "E2E median", "#55a868", "o", "-"),
            ("p99_e2e_from_scheduled_ms", "E2E p99", "#55a868", "s", "--"),
        )
        for key, label, colour, marker, style in series:
            ys = [p.get(key) for p in points]
            if any(y is not None for y in ys):
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker=marker, linestyle=style,
                        color=colour, label=label)  # fmt: skip
        targets = ((points[-1].get("slo") or {}).get("targets")) or {}
        for key, colour in (("ttft_ms", "#4c72b0"), ("e2e_ms", "#55a868")):
            if key in targets:
                ax.axhline(targets[key], color=colour, linestyle=":", alpha=0.8,
                           label=f"SLO {key.removesuffix('_ms').upper()} {targets[key]:g} ms")  # fmt: skip
        invalid = [p["request_rate"] for p in points if p.get("valid") is False]
        for x in invalid:
            ax.axvline(x, color="#c44e52", alpha=0.3, linewidth=6)
        if invalid:
            ax.plot([], [], color="#c44e52", alpha=0.3, linewidth=6, label="client-bound (invalid)")
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize="small")
    else:
        _empty(ax, "no rate sweep")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency (ms)")
    return _render(fig, fmt)


def goodput_vs_rate(
    summaries: Sequence[dict[str, Any]], capacity: dict[str, Any] | None = None, fmt: Format = "png"
) -> bytes:
    """Achieved throughput and goodput per offered rate (confidence intervals as error bars), capacity marked."""
    points = _rate_points(summaries)
    fig, ax = _figure("Goodput vs offered rate")
    if points:
        xs = [p["request_rate"] for p in points]
        ax.plot(xs, xs, color="gray", linestyle=":", label="offered")

        def errors(key: str) -> list[float] | None:
            cis = [(p.get("confidence") or {}).get(key) or {} for p in points]
            if not any(ci.get("half_width") for ci in cis):
                return None
            return [ci.get("half_width") or 0.0 for ci in cis]

        for key, label, colour in (
            ("request_throughput", "throughput", "#4c72b0"),
            ("goodput", "goodput", "#55a868"),
        ):
            ys = [p.get(key) for p in points]
            if all(y is None for y in ys):
                continue
            ax.errorbar(xs, [y or 0.0 for y in ys], yerr=errors(key), marker="o", capsize=3, color=colour,
                        label=f"{label} (requests/s)")  # fmt: skip
        rate = (capacity or {}).get("rate")
        if rate:
            ax.axvline(rate, color="#c44e52", linestyle="--", label=f"capacity at SLO {rate:g} req/s")
        ax.legend(loc="upper left", fontsize="small")
    else:
        _empty(ax, "no rate sweep")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("requests/s")
    return _render(fig, fmt)


def render(
    kind: str,
    samples: dict[str, Any] | Sequence[RequestRecord] | None = None,
    sweep: Sequence[dict[str, Any]] | None = None,
    fmt: Format = "png",
    capacity: dict[str, Any] | None = None,
) -> bytes:
    """One plot by name (`PLOT_KINDS`); ``throughput`` and the rate plots need `sweep`, the others `samples`."""
    if kind == "throughput":
        return throughput_vs_concurrency(sweep or [], fmt)
    if kind == "latency_vs_rate":
        return latency_vs_rate(sweep or [], fmt)
    if kind == "goodput_vs_rate":
        return goodput_vs_rate(sweep or [], capacity, fmt)
    draw = {"ttft": ttft_histogram, "itl": itl_histogram, "latency": latency_over_time}.get(kind)
    if draw is None:
        raise ValueError(f"unknown plot {kind!r}; expected one of {list(PLOT_KINDS)}")
    return draw(samples if samples is not None else [], fmt)
