"""A benchmark after a devcluster deployment: the deploy step, the API (percentiles, targets, plots), the admin
page with its plots, cancel keeping partial results, and bad options refused with nothing created."""

from __future__ import annotations

import pytest

from core.models import Run
from deployments.models import Benchmark

from .conftest import benchmark, deploy, finished, wait_progress

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"DEVCLUSTER_TTFT_MS": "40", "DEVCLUSTER_ITL_MS": "5"}
STATS = ("mean", "median", "p25", "p75", "p95", "p99", "min", "max")


def test_benchmark_after_deploy_api_plots_admin_and_cancel(
    api, cluster, client, admin_user, django_user_model
):
    # The deploy request's benchmark step runs the same service and stores a Benchmark of the deploy run.
    deployment, body = deploy(api, cluster, "bench", FAST, benchmark={"requests": 20, "concurrency": 4})
    assert deployment.status == "running"
    first = Benchmark.objects.get(deployment=deployment)
    assert str(first.run_id) == body["run_id"] and first.status == "succeeded"
    assert first.summary["successful_requests"] == 20 and first.settings["concurrency"] == 4
    step = Run.objects.get(pk=body["run_id"]).steps.get(name="benchmark")
    assert step.output["benchmark_id"] == first.pk and step.output["successful_requests"] == 20

    # Bad options: 400, nothing created (no row, no run).
    runs = Run.objects.count()
    for bad in (
        {"requests": 0},
        {"concurrency": "many"},
        {"requets": 5},
        {"sweep": []},
        {"sweep": [4, 4]},
        {"dataset": "../../../etc/passwd"},
        {"targets": {"ttft": 100}},
        {"endpoint": "rerank"},
        {"requests": 10**9},
    ):
        response = api.post(f"/deployments/{deployment.pk}/benchmark", bad, format="json")
        assert response.status_code == 400, (bad, response.json())
    assert api.post(f"/deployments/{deployment.pk}/benchmark", [1], format="json").status_code == 400
    assert Benchmark.objects.count() == 1 and Run.objects.count() == runs

    # Only a running deployment is benchmarked.
    type(deployment).objects.filter(pk=deployment.pk).update(status="degraded")
    response = api.post(f"/deployments/{deployment.pk}/benchmark", {}, format="json")
    assert response.status_code == 409 and "running" in response.json()["detail"]
    assert response.json()["code"] == "not_running"
    type(deployment).objects.filter(pk=deployment.pk).update(status="running")
    assert Benchmark.objects.count() == 1

    # A sweep with targets: percentiles, verdict with the margin, one summary per concurrency.
    row, detail = benchmark(
        api, deployment, requests=8, sweep=[1, 4], output_tokens=8, endpoint="completions",
        targets={"ttft_ms": 10_000, "e2e_ms": 1}, margin=0.2,
    )  # fmt: skip
    assert row.status == "succeeded" and not row.partial and row.run_id is not None
    summary = detail["summary"]
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        values = [summary[f"{stat}_{metric}"] for stat in STATS]
        # An inter-token gap is 0 when two tokens arrive in one socket read (a loaded machine coalesces the
        # 5 ms chunks), as in vLLM's client; so the low percentiles may be 0, the mean and the max may not.
        assert all(v is not None and v >= 0 for v in values), metric
        assert summary[f"mean_{metric}"] > 0 and summary[f"max_{metric}"] > 0, metric
        ordered = [
            summary[f"{stat}_{metric}"] for stat in ("min", "p25", "median", "p75", "p95", "p99", "max")
        ]
        assert ordered == sorted(ordered), metric
    assert summary["successful_requests"] == 8 and summary["total_output_tokens"] == 64
    assert [p["concurrency"] for p in detail["sweep"]] == [1, 4] and summary["concurrency"] == 4
    assert detail["verdict"]["passed"] is False and detail["verdict"]["margin"] == 0.2
    checks = detail["verdict"]["checks"]
    assert checks["ttft_ms"]["passed"] is True and checks["e2e_ms"]["passed"] is False
    assert checks["e2e_ms"]["limit"] == pytest.approx(1.2)
    assert detail["errors"] == [] and detail["partial"] is False
    assert detail["settings"]["model"] == "llama-3.1-8b-instruct" and "header_names" in detail["settings"]
    assert detail["mean_ttft_ms"] == pytest.approx(summary["mean_ttft_ms"])

    listing = api.get(f"/benchmarks?deployment={deployment.pk}").json()["results"]
    assert {b["id"] for b in listing} == {first.pk, row.pk}
    assert [b["id"] for b in api.get("/benchmarks?status=failed").json()["results"]] == []

    # Plots: PNG and SVG; throughput only for a sweep, with the reason otherwise.
    png = api.get(f"/benchmarks/{row.pk}/plots/ttft.png")
    assert png.status_code == 200 and png["Content-Type"] == "image/png" and png.content[:4] == b"\x89PNG"
    svg = api.get(f"/benchmarks/{row.pk}/plots/itl.svg")
    assert svg.status_code == 200 and svg["Content-Type"] == "image/svg+xml" and b"<svg" in svg.content
    for kind in ("latency", "throughput"):
        assert api.get(f"/benchmarks/{row.pk}/plots/{kind}.png").content[:4] == b"\x89PNG"
    no_sweep = api.get(f"/benchmarks/{first.pk}/plots/throughput.png")
    assert no_sweep.status_code == 404 and "sweep" in no_sweep.json()["detail"]
    assert api.get(f"/benchmarks/{row.pk}/plots/nonsense.png").status_code == 404
    assert set(detail["plots"]) == {"ttft", "itl", "latency", "throughput"}

    # The admin page shows the summary table and the plots, served by a permission-checked admin view.
    client.force_login(admin_user)
    page = client.get(f"/admin/deployments/benchmark/{row.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    plot_url = f"/admin/deployments/benchmark/{row.pk}/plots/ttft.png"
    assert plot_url in html and "p99" in html and "throughput" in html
    image = client.get(plot_url)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    assert client.get("/admin/deployments/benchmark/").status_code == 200
    staff = django_user_model.objects.create_user(
        "staff", "s@example.com", "a-long-test-password", is_staff=True
    )
    client.force_login(staff)
    assert client.get(plot_url).status_code == 403

    # Cancel mid-benchmark: the run ends cancelled, what finished is kept and marked partial.
    response = api.post(
        f"/deployments/{deployment.pk}/benchmark",
        {"requests": 400, "concurrency": 4, "output_tokens": 32, "endpoint": "completions"},
        format="json",
    )
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    wait_progress(run_id, 0.02)
    assert api.post(f"/runs/{run_id}/cancel", {}, format="json").status_code == 202
    assert finished(run_id).status == "cancelled"
    cancelled = api.get(f"/benchmarks/{response.json()['benchmark_id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["partial"] is True
    assert cancelled["summary"]["partial"] is True
    assert 0 < cancelled["summary"]["successful_requests"] < 400
    assert cancelled["successful_requests"] == cancelled["summary"]["successful_requests"]
    assert api.get(f"/benchmarks/{cancelled['id']}/plots/latency.png").status_code == 200
