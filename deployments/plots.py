"""Pictures of a benchmark run: PNG or SVG bytes from stored samples, rendered headless.

Plots are drawn on `matplotlib.figure.Figure` objects directly (never pyplot): no global figure registry, no
GUI backend, safe in web and Celery worker threads; `savefig` picks the Agg renderer for PNG and the SVG
renderer for SVG.  Inputs are what the service stores: the compact samples from `benchstats.encode_samples`
(or a list of `loadgen.RequestRecord`) and, for a sweep, the summaries from `benchstats.summarize`.

Kinds (`PLOT_KINDS`): ``ttft`` (TTFT histogram), ``itl`` (inter-token latency histogram), ``latency``
(TTFT and E2E of each request against its start time, failures marked), ``throughput`` (output and request
throughput against concurrency for a sweep).
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
PLOT_KINDS = ("ttft", "itl", "latency", "throughput")
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


def render(
    kind: str,
    samples: dict[str, Any] | Sequence[RequestRecord] | None = None,
    sweep: Sequence[dict[str, Any]] | None = None,
    fmt: Format = "png",
) -> bytes:
    """One plot by name (`PLOT_KINDS`); ``throughput`` needs `sweep`, the others `samples`."""
    if kind == "throughput":
        return throughput_vs_concurrency(sweep or [], fmt)
    draw = {"ttft": ttft_histogram, "itl": itl_histogram, "latency": latency_over_time}.get(kind)
    if draw is None:
        raise ValueError(f"unknown plot {kind!r}; expected one of {list(PLOT_KINDS)}")
    return draw(samples if samples is not None else [], fmt)
