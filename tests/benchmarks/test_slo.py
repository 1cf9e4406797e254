"""Benchmarks to an SLO through the API, on a devcluster deployment run by a real worker: goodput and attainment
stored and shown, a request-rate sweep finding the capacity at SLO with its plots, a client-bound run flagged
invalid with the reason, repetitions with confidence intervals from two load processes, a rate search stopping
where goodput drops, and bad options refused with nothing created.

The simulated pods have 4 sequence slots (``--max-num-seqs=4``), TTFT 40 ms and ITL 5 ms: with 8 output tokens a
request holds a slot ~75 ms, so the deployment serves ~53 requests/s before requests queue (and their TTFT from
the scheduled send grows without bound).
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from core.models import Run
from deployments.models import Benchmark

from .conftest import benchmark, deploy

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"DEVCLUSTER_TTFT_MS": "40", "DEVCLUSTER_ITL_MS": "5"}
SLO = {"ttft_ms": 250, "tpot_ms": 20}
COMMON = {"requests": 40, "output_tokens": 8, "input_tokens": 16, "endpoint": "completions"}
# The sweep's: generous next to the pods' 40 ms TTFT and 5 ms ITL, because the suite shares two cores with the
# devcluster and the points below the capacity must pass however busy the machine is; at 200 req/s the queue in
# the server (80 requests served at ~53/s) still pushes about half of them past 600 ms from their scheduled send.
SWEEP_SLO = {"ttft_ms": 600, "tpot_ms": 50}


@pytest.fixture
def slotted(api, cluster):
    deployment, _ = deploy(api, cluster, "slo", ENV, engine_args=["--max-num-seqs=4"])
    return deployment


def test_rate_sweep_finds_the_capacity_at_slo_and_flags_a_client_bound_run(api, slotted, client, admin_user):
    deployment = slotted
    # Bad options: 400 naming the field, nothing created.
    runs, rows = Run.objects.count(), Benchmark.objects.count()
    for bad, field in (
        ({"slo": {"ttft": 100}}, "slo"),
        ({"slo": {"min_share": 0.5}}, "slo"),
        ({"slo": {"ttft_ms": -1}}, "slo"),
        ({"rates": []}, "rates"),
        ({"rates": [5, 5]}, "rates"),
        ({"rates": [5], "sweep": [1, 2]}, "rates"),
        ({"rates": [5], "rate": 2}, "rate"),
        ({"rate_search": {"start": 1}}, "slo"),
        ({"rate_search": {"start": 4, "max_rate": 2}, "slo": SLO}, "rate_search"),
        ({"processes": 0}, "processes"),
        ({"processes": 4, "concurrency": 2}, "processes"),
        ({"workload": "agentic"}, "workload"),
        ({"workload": "multi_turn", "endpoint": "embeddings"}, "workload"),
        ({"repeat": 0}, "repeat"),
        ({"confidence": 1.5}, "confidence"),
        ({"requests": 40_000, "rates": [1, 2], "repeat": 2}, "requests"),
    ):
        response = api.post(f"/deployments/{deployment.pk}/benchmark", bad, format="json")
        assert response.status_code == 400, (bad, response.json())
        assert field in str(response.json()), (bad, response.json())
    assert (Run.objects.count(), Benchmark.objects.count()) == (runs, rows)

    # Rates 10 and 25 sit well below the ~53 req/s the pods serve; at 200 req/s requests queue in the server.
    # The client-lag limit is raised here: the devcluster and this test share two busy cores, and this run is
    # about the server's capacity (the client-bound case follows).
    row, detail = benchmark(
        api,
        deployment,
        timeout=180,
        rates=[10, 25, 200],
        slo=SWEEP_SLO,
        seed=1,
        max_client_lag_ms=500,
        **{**COMMON, "requests": 80},
    )
    assert row.status == "succeeded", row.error
    assert [p["request_rate"] for p in detail["sweep"]] == [10, 25, 200]
    low, mid, high = detail["sweep"]
    assert low["slo"]["passed"] and mid["slo"]["passed"] and low["valid"] and mid["valid"]
    assert high["slo"]["attainment"] < 0.9 and not high["slo"]["passed"]
    assert high["p99_ttft_from_scheduled_ms"] > SWEEP_SLO["ttft_ms"]
    assert detail["capacity"]["rate"] == 25 and row.capacity_rps == 25
    assert "at 200 req/s" in detail["capacity"]["limited_by"]
    # Stored columns and the detail's verdict are the last point's; the list shows them too.
    assert detail["slo"] == {**SWEEP_SLO, "min_share": 0.9}
    assert detail["slo_verdict"]["targets"] == SWEEP_SLO and detail["goodput"] == pytest.approx(
        high["goodput"]
    )
    assert detail["slo_attainment"] == pytest.approx(high["slo"]["attainment"])
    assert set(detail["slo_verdict"]["shares"]) == {"ttft_ms", "tpot_ms"}
    assert detail["client"]["processes"] == 1 and detail["client"]["send_lag_ms"]["p99"] is not None
    listed = {b["id"]: b for b in api.get(f"/benchmarks?deployment={deployment.pk}").json()["results"]}
    assert listed[row.pk]["capacity_rps"] == 25 and listed[row.pk]["goodput"] == pytest.approx(
        high["goodput"]
    )
    # Rate plots, and no throughput-vs-concurrency plot for a rate sweep.
    assert set(detail["plots"]) == {"ttft", "itl", "latency", "latency_vs_rate", "goodput_vs_rate"}
    for kind in ("latency_vs_rate", "goodput_vs_rate"):
        image = api.get(f"/benchmarks/{row.pk}/plots/{kind}.png")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG", kind
    assert api.get(f"/benchmarks/{row.pk}/plots/goodput_vs_rate.svg").content.count(b"<svg") == 1
    assert api.get(f"/benchmarks/{row.pk}/plots/throughput.png").status_code == 404
    # An error to a request that asked for an image is JSON all the same, not an image of a dict.
    missing = api.get("/benchmarks/999999/plots/ttft.png?format=png")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/json"
    assert "detail" in missing.json()

    # Two slots for 100 requests/s: the client queues them itself, which the actual-send figures hide.
    bound, bound_detail = benchmark(
        api, deployment, concurrency=2, rate=100, slo={"ttft_ms": 250}, seed=2, **COMMON
    )
    s = bound_detail["summary"]
    assert bound.status == "succeeded" and bound.valid is False and bound_detail["valid"] is False
    assert "p99 send lag" in bound.invalid_reason and bound_detail["invalid_reason"] == bound.invalid_reason
    assert s["p99_ttft_ms"] < 250 < s["p99_ttft_from_scheduled_ms"]
    invalid = api.get("/benchmarks?valid=false").json()["results"]
    assert [b["id"] for b in invalid] == [bound.pk]

    # The admin shows the verdicts: capacity, the SLO table, the client's health, and the client-bound badge.
    client.force_login(admin_user)
    html = client.get(f"/admin/deployments/benchmark/{row.pk}/change/").content.decode()
    assert "capacity at SLO" in html and "25 req/s" in html and "goodput (req/s)" in html
    assert f"/admin/deployments/benchmark/{row.pk}/plots/goodput_vs_rate.png" in html
    assert client.get(f"/admin/deployments/benchmark/{row.pk}/plots/latency_vs_rate.png").status_code == 200
    html = client.get(f"/admin/deployments/benchmark/{bound.pk}/change/").content.decode()
    assert "p99 send lag" in html
    assert "Client-bound" in client.get("/admin/deployments/benchmark/").content.decode()


def test_repetitions_over_two_load_processes_and_a_rate_search(api, slotted):
    deployment = slotted
    row, detail = benchmark(
        api, deployment, rate=20, concurrency=16, processes=2, repeat=3, confidence=0.9, workload="shared_prefix",
        prefix_tokens=32, slo=SLO, **COMMON,
    )  # fmt: skip
    assert row.status == "succeeded", row.error
    s = detail["summary"]
    assert s["successful_requests"] == 3 * 40 and len(s["repetitions"]) == 3
    assert detail["client"]["processes"] == 2 and len(detail["client"]["cpu_percent"]) == 2 * 3
    assert s["total_input_tokens"] == 3 * 40 * (32 + 16)  # shared prefix + own part, counted by the server
    ci = detail["confidence"]["mean_ttft_ms"]
    assert ci["n"] == 3 and ci["level"] == 0.9 and ci["low"] < ci["mean"] < ci["high"]
    assert detail["confidence"]["goodput"]["n"] == 3

    # Climb 10, 40, 160 ... req/s until goodput drops: at 160 the pods' ~53 req/s caps it, so the climb ends.
    row, detail = benchmark(
        api,
        deployment,
        timeout=120,
        rate_search={"start": 10, "factor": 4, "max_points": 5},
        slo=SLO,
        max_client_lag_ms=200,  # the climb is about the server; this shared machine's hiccups are not
        **COMMON,
    )
    rates = [p["request_rate"] for p in detail["sweep"]]
    assert rates[:3] == [10, 40, 160] and len(rates) <= 4
    goodputs = [p["goodput"] for p in detail["sweep"]]
    assert goodputs[-1] < 0.95 * max(goodputs)
    assert detail["capacity"]["rate"] in (10, 40)

    # The command takes the same options and prints the sweep, the SLO verdict and the capacity.
    out = io.StringIO()
    call_command(
        "benchmark", deployment.name, "--rates", "10,200", "--slo-ttft-ms", "250", "--requests", "30",
        "--output-tokens", "8", "--endpoint", "completions", "--no-progress", stdout=out,
    )  # fmt: skip
    text = out.getvalue()
    assert "offered r/s" in text and "goodput" in text and "TTFT from scheduled send" in text
    assert "capacity at SLO: 10 req/s (limited by: " in text and "at 200 req/s" in text
    assert Benchmark.objects.filter(deployment=deployment).latest("created_at").capacity_rps == 10
