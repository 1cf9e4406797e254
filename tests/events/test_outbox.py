"""The event outbox: every state change is an event written in its own transaction, read back through
``GET /events`` in commit order with a cursor that never misses or repeats one."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from clusters import services as cluster_services
from clusters.models import Cluster, ClusterEvent
from core import events, workflow
from core.models import Event
from deployments import services as deployment_services
from deployments.health import upsert_workers
from deployments.models import Deployment, Worker
from hardware.services import store_inventory
from tests.worker import run_finished

from .nodes import gpu_node


def _cluster(name="c1", status="available") -> Cluster:
    return Cluster.objects.create(name=name, status=status, kubeconfig="kubeconfig-secret")


def _types(subject: str | None = None) -> list[str]:
    qs = Event.objects.order_by("seq")
    if subject:
        qs = qs.filter(subject=subject)
    return list(qs.values_list("type", flat=True))


def _read_all(api, **params) -> list[dict]:
    """Every event after ``after`` by following the cursor with small pages, as a consumer would."""
    seen, after = [], params.pop("after", "")
    while True:
        answer = api.get("/events", {"after": after, "limit": 2, **params})
        assert answer.status_code == 200, answer.content
        body = answer.json()
        seen += body["events"]
        if body["next"] == after or not body["has_more"]:
            return seen
        after = body["next"]


# --- writers ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cluster_status_change_is_an_event_in_cloudevents_form(api):
    cluster = _cluster()
    assert cluster_services.set_status(cluster, "not_available", "API server not answering")
    answer = api.get("/events", {"subject": f"clusters/{cluster.pk}"})
    assert answer.status_code == 200
    [event] = answer.json()["events"]
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.bud.cluster.status.changed"
    assert event["source"] == "/budcluster"
    assert event["subject"] == f"clusters/{cluster.pk}"
    assert event["time"].endswith("Z")
    assert event["data"] == {
        "cluster": cluster.pk,
        "name": "c1",
        "old_status": "available",
        "new_status": "not_available",
        "reason": "API server not answering",
        "kind": "status",
    }
    # The kubeconfig never travels in an event.
    assert "kubeconfig-secret" not in answer.content.decode()


@pytest.mark.django_db
def test_no_event_without_a_change_and_none_for_a_rolled_back_change():
    cluster = _cluster()
    assert not cluster_services.set_status(cluster, "available")
    assert _types() == []
    with pytest.raises(RuntimeError), transaction.atomic():
        cluster_services.set_status(cluster, "error", "boom")
        raise RuntimeError("the caller's transaction fails after the change")
    cluster.refresh_from_db()
    assert cluster.status == "available"
    assert _types() == [] and not ClusterEvent.objects.exists()


@pytest.mark.django_db
def test_health_sweep_transitions_are_events(monkeypatch):
    up, down = _cluster("up", "available"), _cluster("down", "available")
    monkeypatch.setattr(
        cluster_services,
        "_probe_all",
        lambda clusters, *a, **k: {
            c.pk: (c.pk == up.pk, "" if c.pk == up.pk else "connection refused") for c in clusters
        },
    )
    report = cluster_services.sweep()
    assert report.transitions == [("down", "available", "not_available")]
    [event] = Event.objects.all()
    assert (event.type, event.subject) == ("io.bud.cluster.status.changed", f"clusters/{down.pk}")
    assert event.data["new_status"] == "not_available" and "connection refused" in event.data["reason"]


@pytest.mark.django_db
def test_deployment_status_change_is_an_event():
    cluster = _cluster()
    dep = Deployment.objects.create(cluster=cluster, name="llama", namespace="bud-llama", status="running")
    assert deployment_services.set_status(dep, "unhealthy", "endpoint answers 503")
    [event] = Event.objects.all()
    assert event.type == "io.bud.deployment.status.changed"
    assert event.subject == f"deployments/{dep.pk}"
    assert event.data["old_status"] == "running" and event.data["new_status"] == "unhealthy"
    assert event.data["cluster"] == cluster.pk


@pytest.mark.django_db
def test_inventory_changes_are_events_and_a_quiet_refresh_is_not():
    cluster = _cluster()
    store_inventory(cluster, [gpu_node("n1", gpus=8), gpu_node("n2", gpus=8)], [])
    [first] = Event.objects.all()
    assert first.type == "io.bud.cluster.inventory.changed"
    assert first.data["added"] == ["n1", "n2"] and first.data["gpus"] == 16 and first.data["gpus_free"] == 16
    # The same nodes again: nothing changed, nothing to tell.
    store_inventory(cluster, [gpu_node("n1", gpus=8), gpu_node("n2", gpus=8)], [])
    assert Event.objects.count() == 1
    # A pod takes 2 GPUs on n1, and n2 leaves.
    pod = {
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"nodeName": "n1", "containers": [{"resources": {"requests": {"nvidia.com/gpu": "2"}}}]},
        "status": {"phase": "Running"},
    }
    store_inventory(cluster, [gpu_node("n1", gpus=8)], [pod])
    last = Event.objects.order_by("-seq").first()
    assert last.data["removed"] == ["n2"] and last.data["gpus"] == 8 and last.data["gpus_free"] == 6
    assert last.data["previous"] == {"nodes": 2, "gpus": 16, "gpus_free": 16}


@pytest.mark.django_db
def test_worker_pod_changes_are_events():
    cluster = _cluster()
    dep = Deployment.objects.create(cluster=cluster, name="llama", namespace="bud-llama", status="running")

    def pod(name, phase, ready, restarts=0):
        return {
            "metadata": {"name": name},
            "spec": {"nodeName": "n1", "containers": [{"name": "vllm"}]},
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [{"name": "vllm", "ready": ready, "restartCount": restarts}],
            },
        }

    upsert_workers(dep, [pod("w-a", "Pending", False)])
    upsert_workers(dep, [pod("w-a", "Pending", False)])  # unchanged
    upsert_workers(dep, [pod("w-a", "Running", True)])
    upsert_workers(dep, [])
    changes = [e.data for e in Event.objects.filter(type="io.bud.deployment.worker.changed").order_by("seq")]
    assert [(c["worker"], c["old_phase"], c["phase"]) for c in changes] == [
        ("w-a", "", "Pending"),
        ("w-a", "Pending", "Running"),
        ("w-a", "Running", "gone"),
    ]
    assert changes[1]["ready"] is True
    assert not Worker.objects.filter(deployment=dep).exists()


def test_run_lifecycle_events(worker, api):
    run = workflow.get_workflow("demo.chain").launch(params={})
    run_finished(run.pk)
    events_of_run = [(e["type"], e["data"]["step"]) for e in _read_all(api, subject=f"runs/{run.pk}")]
    steps = list(run.steps.filter(phase="main").order_by("order").values_list("name", flat=True))
    assert events_of_run == [
        ("io.bud.run.queued", ""),
        ("io.bud.run.started", ""),
        *[("io.bud.run.progress", s) for s in steps],
        ("io.bud.run.succeeded", ""),
    ]
    data = Event.objects.filter(subject=f"runs/{run.pk}").last().data
    assert data["kind"] == "demo.chain" and data["run"] == str(run.pk) and data["status"] == "succeeded"


# --- the cursor -------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cursor_never_misses_an_event_that_commits_late(api):
    """Transaction A writes its event first but commits last; a consumer that read B's event in between still
    gets A's on its next poll, once, and nothing twice."""
    a_wrote, b_done, release_a = threading.Event(), threading.Event(), threading.Event()

    def slow_writer():
        try:
            with transaction.atomic():
                events.emit("run.started", "runs/a", {"who": "a"})
                a_wrote.set()
                assert release_a.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert a_wrote.wait(30)
    with transaction.atomic():
        events.emit("run.started", "runs/b", {"who": "b"})
    b_done.set()

    first = api.get("/events").json()
    assert [e["subject"] for e in first["events"]] == ["runs/b"]  # A is not committed: invisible, not skipped
    release_a.set()
    thread.join(30)
    second = api.get("/events", {"after": first["next"]}).json()
    assert [e["subject"] for e in second["events"]] == ["runs/a"]
    third = api.get("/events", {"after": second["next"]}).json()
    assert third["events"] == [] and third["next"] == second["next"]


@pytest.mark.django_db
def test_filters_and_paging(api):
    for i in range(5):
        events.emit("cluster.status.changed", "clusters/1", {"i": i})
        events.emit("run.started", f"runs/{i}", {"i": i})
    everything = _read_all(api)
    assert len(everything) == 10 and len({e["id"] for e in everything}) == 10
    runs = _read_all(api, type="io.bud.run.*")
    assert [e["data"]["i"] for e in runs] == [0, 1, 2, 3, 4]
    exact = _read_all(api, type="io.bud.cluster.status.changed,io.bud.nothing")
    assert [e["subject"] for e in exact] == ["clusters/1"] * 5
    # A filtered page still moves the cursor past what it left out.
    answer = api.get("/events", {"type": "io.bud.cluster.status.changed", "after": ""}).json()
    assert answer["next"] == str(Event.objects.order_by("-position").first().position)
    one = Event.objects.filter(subject="runs/3").get()
    detail = api.get(f"/events/{one.id}")
    assert detail.status_code == 200 and detail.json()["data"] == {"i": 3}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params, field",
    [
        ({"after": "abc"}, "after"),
        ({"after": "-1"}, "after"),
        ({"type": "Not A Type!"}, "type"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_query_is_a_400_naming_the_parameter(api, params, field):
    answer = api.get("/events", params)
    assert answer.status_code == 400, answer.content
    body = answer.json()
    assert field in (body.get("errors") or {}), body


@pytest.mark.django_db
def test_events_need_the_view_permission(api_noperm):
    events.emit("run.started", "runs/x", {})
    assert api_noperm.get("/events").status_code == 403
