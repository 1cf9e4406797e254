"""Autoscaling on devcluster end to end: the production beat (every second here) evaluates the policy on the real
worker, reads each simulated replica's ``/metrics`` through the API server's pod proxy, and scales through the update
run. Policies use short windows so that each test runs in well under a minute; every wait is on what the evaluations
record (replica counts, runs, conditions, events), never on time."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.utils.dateparse import parse_datetime

from core.choices import RunStatus
from core.models import Run
from deployments.choices import DeploymentStatus
from deployments.models import Deployment, DeploymentEvent
from tests.worker import wait_for

from .conftest import Load, deploy

pytestmark = pytest.mark.django_db(transaction=True)

# Two slots per replica (--max-num-seqs=2), a request ~0.5 s: sixteen streams leave ~14 waiting on one replica and
# ~3.3 per replica on three, above the target of 2 either way.
ENV = {"DEVCLUSTER_TTFT_MS": "20", "DEVCLUSTER_ITL_MS": "20"}
STREAMS = 16
POLICY = {"min_replicas": 1, "max_replicas": 3, "metric": "waiting_requests", "target": 2}


def running_deployment(api, cluster, name: str, **policy) -> Deployment:
    deployment, _ = deploy(api, cluster, name, ENV, engine_args=["--max-num-seqs=2"])
    answer = api.put(f"/deployments/{deployment.pk}/autoscaling", {**POLICY, **policy}, format="json")
    assert answer.status_code == 200, answer.json()
    # The first evaluations read the idle replica: waiting 0, at the minimum already.
    wait_for(
        lambda: condition(deployment)["reason"] == "ScalingActive", timeout=30, what="the first evaluation"
    )
    return deployment


def state(deployment: Deployment) -> dict:
    return Deployment.objects.get(pk=deployment.pk).autoscaling_state


def condition(deployment: Deployment) -> dict:
    return state(deployment).get("condition") or {}


def settled_at(deployment: Deployment, replicas: int) -> Deployment | None:
    """The deployment once it runs ``replicas`` ready replicas with no run in progress."""
    current = Deployment.objects.get(pk=deployment.pk)
    busy = Run.objects.filter(subject_id=str(deployment.pk), status__in=RunStatus.active()).exists()
    if (current.replicas, current.ready_replicas, current.status, busy) == (
        replicas, replicas, DeploymentStatus.RUNNING, False,
    ):  # fmt: skip
        return current
    return None


def scale_events(deployment: Deployment) -> list[DeploymentEvent]:
    return list(
        DeploymentEvent.objects.filter(
            deployment=deployment, kind="autoscaling", message__startswith="scale "
        ).order_by("created_at", "id")
    )


def evaluated_since(deployment: Deployment, moment: datetime, check) -> dict | None:
    """The last evaluation, if it was made after ``moment`` and ``check`` holds for it."""
    evaluation = state(deployment).get("last_evaluation") or {}
    if evaluation.get("value") is None or parse_datetime(evaluation["time"]) <= moment:
        return None
    return evaluation if check(evaluation) else None


def test_load_scales_one_to_three_and_back_after_the_cooldown(api, cluster, worker, beat):
    from django.utils import timezone

    deployment = running_deployment(
        api, cluster, "autoscaled", scale_up_cooldown_seconds=0, scale_down_stabilization_seconds=3,
        scale_down_cooldown_seconds=4,
    )  # fmt: skip
    load = Load(deployment.endpoint_url + "/v1", deployment.served_model_name, concurrency=STREAMS).start()
    try:
        wait_for(lambda: settled_at(deployment, 3), timeout=60, what="three ready replicas under load")
    finally:
        load.stop()
    stopped = timezone.now()
    ups = scale_events(deployment)
    assert ups and all(" up " in e.message for e in ups), [e.message for e in ups]
    assert ups[0].message.startswith("scale up 1 → ") and ups[-1].message.startswith(
        f"scale up {ups[-1].data['evaluation']['replicas']} → 3"
    )
    # The decision carries the metric values that caused it: waiting requests per replica above the target.
    first = ups[0].data["evaluation"]
    assert first["metric"] == "waiting_requests" and first["value"] > 2 and first["target"] == 2
    assert sum(first["pods"].values()) / len(first["pods"]) == pytest.approx(first["value"])
    assert ups[0].data["run_id"]

    last_up_run = Run.objects.get(pk=ups[-1].data["run_id"])
    assert last_up_run.status == RunStatus.SUCCEEDED and last_up_run.kind == "deployment.update"
    settled = wait_for(lambda: settled_at(deployment, 1), timeout=60, what="back to one replica")
    (down,) = scale_events(deployment)[len(ups) :]
    assert down.message.startswith("scale down 3 → 1")
    assert down.data["evaluation"]["value"] == 0
    # Not before the cooldown after the last scale ended, nor before the scale-down window after the load stopped.
    assert (down.created_at - last_up_run.finished_at).total_seconds() >= 4
    assert (down.created_at - stopped).total_seconds() >= 3
    assert settled.autoscaling_state["condition"]["status"] == "True"
    detail = api.get(f"/deployments/{deployment.pk}").json()
    assert detail["replicas"] == 1 and detail["autoscaling"]["last_scale"]["to"] == 1
    assert any(e["kind"] == "autoscaling" and e["data"].get("evaluation") for e in detail["events"])


def test_flapping_load_does_not_flap_replicas(api, cluster, worker, beat):
    from django.utils import timezone

    window = 8
    deployment = running_deployment(
        api, cluster, "flapping", scale_up_cooldown_seconds=0, scale_down_cooldown_seconds=0,
        scale_down_stabilization_seconds=window,
    )  # fmt: skip
    load = Load(deployment.endpoint_url + "/v1", deployment.served_model_name, concurrency=STREAMS).start()
    try:
        wait_for(lambda: settled_at(deployment, 3), timeout=60, what="three ready replicas under load")
        scaled = len(scale_events(deployment))
        # Load off until an evaluation sees no waiting request, on until one sees the queue again; three times.
        for _ in range(3):
            load.stop()
            off = timezone.now()
            wait_for(
                lambda off=off: evaluated_since(deployment, off, lambda e: e["value"] == 0),
                timeout=20, what="an evaluation of the idle replicas",
            )  # fmt: skip
            quiet = state(deployment)["last_evaluation"]
            assert quiet["recommendation"] == 1 and quiet["decision"] == "hold", quiet
            load.start()
            on = timezone.now()
            wait_for(
                lambda on=on: evaluated_since(deployment, on, lambda e: e["value"] > 2),
                timeout=20, what="an evaluation of the queue",
            )  # fmt: skip
        assert len(scale_events(deployment)) == scaled  # no scale in either direction while the load flapped
        assert Deployment.objects.get(pk=deployment.pk).replicas == 3
    finally:
        load.stop()
    # Quiet for longer than the window: down once, to the minimum.
    wait_for(lambda: settled_at(deployment, 1), timeout=60, what="back to one replica")
    downs = [e.message for e in scale_events(deployment) if " down " in e.message]
    assert downs == [downs[0]] and downs[0].startswith("scale down 3 → 1")


def test_a_scale_up_beyond_the_cluster_stops_at_what_fits_and_says_why(api, cluster, worker, beat):
    # Fourteen waiting on one replica against a target of 0.5 wants 28 replicas; the cluster's GPUs hold fewer.
    deployment = running_deployment(
        api, cluster, "greedy", max_replicas=64, target=0.5, scale_up_cooldown_seconds=0
    )
    load = Load(deployment.endpoint_url + "/v1", deployment.served_model_name, concurrency=STREAMS).start()
    try:
        wait_for(
            lambda: condition(deployment).get("reason") == "NoCapacity", timeout=60, what="no room for more"
        )
    finally:
        load.stop()
    (up,) = scale_events(deployment)
    placement = up.data["evaluation"]["placement"]
    fitted = placement["fits"]
    assert 1 < fitted < placement["wanted"] <= 64
    assert up.message.startswith(f"scale up 1 → {fitted}:")
    assert f"wanted {placement['wanted']} but only {fitted} fit: " in up.message and placement["reason"]
    limited = DeploymentEvent.objects.filter(deployment=deployment, message__contains="(ScalingLimited)")
    assert limited.exists()
    current = Deployment.objects.get(pk=deployment.pk)
    assert current.replicas == fitted
    # Every replica placed is serving, and the condition says why no more are added.
    assert current.ready_replicas == fitted
    no_room = condition(deployment)
    assert no_room["status"] == "False" and "no more replica fits on the cluster" in no_room["message"]
