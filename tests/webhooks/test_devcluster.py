"""A cluster registered on the devcluster, told by the outbox and by a webhook: the status changes, the inventory
the collectors found and the run's end, in order, signed."""

from __future__ import annotations

import pytest

from clusters.models import Cluster
from core.choices import RunStatus
from devcluster.testing import devcluster_fixture
from hardware.models import Node
from tests.worker import run_finished

from .conftest import subscribe

events = devcluster_fixture(name="events", nodes="gpu-mixed", clusters=1, scope="module")


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def test_registration_is_told_by_events_and_a_webhook(hooks, api, receiver, events):
    dc = events
    sub = subscribe(api, receiver, event_types=["io.bud.cluster.*", "io.bud.run.succeeded"])
    answer = api.post(
        "/clusters/register", {"name": "told", "kubeconfig": dc.kubeconfig_yaml(dc.names[0])}, format="json"
    )
    assert answer.status_code == 202, answer.content
    run = run_finished(answer.json()["run_id"], timeout=120)
    assert run.status == RunStatus.SUCCEEDED, run.error
    cluster = Cluster.objects.get(name="told")

    page = api.get("/events", {"subject": f"clusters/{cluster.pk}"}).json()["events"]
    statuses = [
        (e["data"]["old_status"], e["data"]["new_status"])
        for e in page
        if e["type"].endswith("status.changed")
    ]
    assert statuses[0] == ("", "registering") and statuses[-1][1] == "available"
    [inventory] = [e for e in page if e["type"] == "io.bud.cluster.inventory.changed"]
    nodes = Node.objects.filter(cluster=cluster)
    assert inventory["data"]["nodes"] == nodes.count() == len(inventory["data"]["added"])
    assert inventory["data"]["gpus"] == sum(n.accelerator_count or 0 for n in nodes) > 0

    # The webhook got the same cluster events in the same order, and the run's end.
    wanted = len(page) + 1
    got = receiver.wait_for(wanted, timeout=60)
    assert all(r.signature_valid(sub["secret"]) for r in got)
    told = [r.event["id"] for r in got if r.event["subject"] == f"clusters/{cluster.pk}"]
    assert told == [e["id"] for e in page]
    assert [r.event["subject"] for r in got if r.event["type"] == "io.bud.run.succeeded"] == [
        f"runs/{run.pk}"
    ]
