"""Plots render headless to real PNG / SVG images."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest
from matplotlib import image as mpimg

from deployments import benchstats, plots
from deployments.loadgen import RequestRecord


def samples() -> dict:
    recs = [
        RequestRecord(
            start=i * 0.05,
            ttft=0.2 + (i % 7) * 0.003,
            itl=[0.02 + (j % 3) * 0.001 for j in range(15)],
            e2e=0.52 + (i % 5) * 0.004,
            input_tokens=32,
            output_tokens=16,
            success=True,
        )
        for i in range(40)
    ]
    recs.append(RequestRecord(start=1.0, error="HTTP 500: boom"))
    return benchstats.encode_samples(recs)


SWEEP = [
    {"concurrency": 32, "output_throughput": 900.0, "mean_ttft_ms": 215.0},
    {"concurrency": 1, "output_throughput": 40.0, "mean_ttft_ms": 201.0},
    {"concurrency": 256, "output_throughput": 5100.0, "mean_ttft_ms": 260.0},
]


@pytest.mark.parametrize("kind", plots.PLOT_KINDS)
def test_png_plots_decode_as_images(kind):
    data = plots.render(kind, samples=samples(), sweep=SWEEP, fmt="png")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn


@pytest.mark.parametrize("kind", plots.PLOT_KINDS)
def test_svg_plots_are_svg_documents(kind):
    data = plots.render(kind, samples=samples(), sweep=SWEEP, fmt="svg")
    root = ET.fromstring(data)  # noqa: S314 - our own output
    assert root.tag.endswith("svg")
    assert plots.render(kind, samples=samples(), sweep=SWEEP, fmt="svg") == data  # no timestamp inside


def _texts(svg: bytes) -> list[str]:
    # Matplotlib draws text as glyph paths and keeps each string in a comment next to it.
    return re.findall(r"<!-- (.*?) -->", svg.decode())


def test_titles_labels_and_means_say_what_is_shown():
    ttft = _texts(plots.ttft_histogram(samples(), "svg"))
    assert {"Time to first token", "TTFT (ms)", "count"} <= set(ttft)
    expected_mean = sum(0.2 + (i % 7) * 0.003 for i in range(40)) / 40 * 1000
    assert f"mean {expected_mean:.1f} ms" in ttft
    latency = _texts(plots.latency_over_time(samples(), "svg"))
    assert {"E2E", "TTFT", "failed (1)", "request start (s)"} <= set(latency)
    sweep = _texts(plots.throughput_vs_concurrency(SWEEP, "svg"))
    assert {"1", "32", "256", "output tokens/s", "mean TTFT (ms)", "concurrency"} <= set(sweep)
    assert plots.CONTENT_TYPES["svg"] == "image/svg+xml"


def test_empty_inputs_still_render():
    assert plots.ttft_histogram({**benchstats.encode_samples([])}, "png").startswith(b"\x89PNG")
    assert plots.latency_over_time([], "png").startswith(b"\x89PNG")
    assert plots.throughput_vs_concurrency([], "svg").lstrip().startswith(b"<?xml")


def test_unknown_kind_and_format_are_refused():
    with pytest.raises(ValueError, match="unknown plot"):
        plots.render("pie", samples=samples())
    with pytest.raises(ValueError, match="format"):
        plots.render("ttft", samples=samples(), fmt="gif")  # type: ignore[arg-type]
