"""The decision rules on their own (HPA's algorithm as ``deployments/autoscaling.py`` states it): recommendation with
tolerance and limits, stabilisation windows against flapping, and the TTFT p95 read from histogram deltas."""

from __future__ import annotations

import pytest

from deployments.autoscaling import (
    Policy,
    Reading,
    bucket_delta,
    parse_samples,
    quantile,
    recommend,
    stabilise,
)

POLICY = Policy(
    min_replicas=1, max_replicas=3, metric="waiting_requests", target=2.0,
    scale_up_stabilization_seconds=0.0, scale_down_stabilization_seconds=10.0,
)  # fmt: skip


def reading(value: float, replicas: int) -> Reading:
    return Reading(value=value, replicas=replicas, pods={}, snapshots={}, errors={})


@pytest.mark.parametrize(
    ("value", "replicas", "current", "expected"),
    [
        (10.0, 1, 1, 3),  # 5x the target on one replica wants 5, capped at max 3
        (4.0, 1, 1, 2),  # twice the target: two replicas
        (2.1, 2, 2, 2),  # within the 10 % tolerance: no change
        (0.0, 3, 3, 1),  # no waiting request: down to min
        (1.0, 3, 3, 2),  # half the target on three replicas: ceil(1.5) = 2
    ],
)
def test_recommendation_is_hpa_ratio_within_limits(value, replicas, current, expected):
    assert recommend(POLICY, current, reading(value, replicas))[0] == expected


def test_scale_down_waits_for_the_window_and_load_that_returns_keeps_replicas():
    # Load at t=0 (3 wanted), gone from t=2 to t=8, back at t=9: the highest recommendation of the last 10 s never
    # drops below 3, so three replicas stay.
    history: list[list[float]] = []
    replicas = 1
    for t, raw in [(0, 3), (2, 1), (4, 1), (6, 1), (8, 1), (9, 3), (11, 1), (13, 1)]:
        history.append([float(t), raw])
        replicas, history = stabilise(POLICY, replicas, history, float(t))
        assert replicas == 3, f"t={t}"
    # Quiet for longer than the window: down to 1 once the last high recommendation (t=9) is older than 10 s.
    for t in (15, 17, 19):
        history.append([float(t), 1])
        replicas, history = stabilise(POLICY, replicas, history, float(t))
        assert replicas == 3
    history.append([20.0, 1])
    replicas, history = stabilise(POLICY, replicas, history, 20.0)
    assert replicas == 1
    assert all(20.0 - t <= 10.0 for t, _ in history)


def test_scale_up_window_takes_the_lowest_recommendation():
    policy = Policy(**{**POLICY.as_dict(), "scale_up_stabilization_seconds": 5.0})
    replicas, history = stabilise(policy, 1, [[0.0, 1], [3.0, 3]], 3.0)
    assert replicas == 1  # a spike shorter than the scale-up window does not scale up
    replicas, _ = stabilise(policy, 1, [*history, [6.0, 3.0]], 6.0)
    assert replicas == 3  # sustained past the window: it does


TTFT = """# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.1"} %d
vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.5"} %d
vllm:time_to_first_token_seconds_bucket{model_name="m",le="1.0"} %d
vllm:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} %d
vllm:time_to_first_token_seconds_count{model_name="m"} %d
"""


def buckets(text: str) -> dict[str, float]:
    samples = parse_samples(text, {"vllm:time_to_first_token_seconds_bucket"})
    return {labels["le"]: value for labels, value in samples["vllm:time_to_first_token_seconds_bucket"]}


def test_ttft_p95_is_of_the_requests_since_the_last_scrape():
    before = buckets(TTFT % (1000, 1000, 1000, 1000, 1000))  # 1000 fast requests so far
    after = buckets(TTFT % (1000, 1010, 1020, 1020, 1020))  # then 10 in (0.1, 0.5] and 10 in (0.5, 1.0]
    whole = quantile(0.95, after)
    recent = quantile(0.95, bucket_delta(after, before))
    assert whole is not None and whole < 0.1  # the cumulative histogram hides the slow recent requests
    assert recent == pytest.approx(0.5 + 0.5 * (19 - 10) / 10)  # histogram_quantile's interpolation: 0.95 s
    # A restarted pod's counters start again: what it shows is all new.
    assert bucket_delta(buckets(TTFT % (1, 2, 2, 2, 2)), after) == buckets(TTFT % (1, 2, 2, 2, 2))
    assert quantile(0.95, bucket_delta(after, after)) is None  # no request: nothing to rank
