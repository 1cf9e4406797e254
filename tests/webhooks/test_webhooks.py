"""Webhooks end to end: a real worker posts signed CloudEvents to a receiver on loopback, in order per subject,
retries a failing receiver and then disables the subscription, and delivers again what a killed worker was
posting. Subscriptions are managed through the API and the admin; the secret is shown once."""

from __future__ import annotations

import pytest
from django.db import transaction

from clusters import services as cluster_services
from clusters.models import Cluster
from core import events
from core.models import Event
from tests.worker import wait_for
from webhooks import services
from webhooks.models import Attempt, Delivery, Subscription

from .conftest import subscribe as _subscribe


def _flip(cluster: Cluster, times: int) -> None:
    for i in range(times):
        cluster_services.set_status(cluster, "not_available" if i % 2 == 0 else "available", f"flip {i}")


def test_signed_cloudevents_in_order_per_subject(hooks, api, receiver):
    sub = _subscribe(api, receiver)
    assert sub["secret"].startswith("whsec_")
    listed = api.get(f"/webhooks/{sub['id']}").json()
    assert "secret" not in listed and sub["secret"] not in api.get("/webhooks").content.decode()

    a = Cluster.objects.create(name="a", status="available", kubeconfig="x")
    b = Cluster.objects.create(name="b", status="available", kubeconfig="x")
    _flip(a, 5)
    _flip(b, 3)
    events.emit("run.started", "runs/not-subscribed", {})  # filtered out by event_types

    got = receiver.wait_for(8)
    for r in got:
        assert r.signature_valid(sub["secret"]), r.headers
        assert r.headers["content-type"] == "application/cloudevents+json"
        assert r.headers["webhook-id"] == r.event["id"]
    for cluster, flips in ((a, 5), (b, 3)):
        subject = f"clusters/{cluster.pk}"
        mine = [r.event for r in got if r.event["subject"] == subject]
        expected = list(
            Event.objects.filter(subject=subject).order_by("position").values_list("id", flat=True)
        )
        assert [e["id"] for e in mine] == [str(i) for i in expected] and len(mine) == flips
        assert [e["data"]["reason"] for e in mine] == [f"flip {i}" for i in range(flips)]
    wait_for(lambda: Delivery.objects.filter(status="delivered").count() == 8, what="8 deliveries recorded")
    assert not Delivery.objects.exclude(status="delivered").exists()
    log = list(Attempt.objects.all())
    assert len(log) == 8 and {a.status_code for a in log} == {204} and all(a.latency_ms > 0 for a in log)
    # The deliveries and their attempts as the API shows them.
    page = api.get(f"/webhooks/{sub['id']}/deliveries").json()
    assert page["count"] == 8 and page["results"][0]["attempt_log"][0]["status_code"] == 204


def test_a_failing_head_holds_its_line(hooks, api, receiver):
    receiver.status = lambda n: 500 if n == 1 else 204
    _subscribe(api, receiver)
    c = Cluster.objects.create(name="c", status="available", kubeconfig="x")
    _flip(c, 3)
    got = receiver.wait_for(4)
    reasons = [r.event["data"]["reason"] for r in got]
    # flip 0 failed once and was retried before flip 1 and flip 2 went out.
    assert reasons == ["flip 0", "flip 0", "flip 1", "flip 2"]
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    head = Delivery.objects.order_by("position").first()
    wait_for(lambda: Delivery.objects.filter(status="delivered").count() == 3, what="all delivered")
    assert [a.status_code for a in head.attempt_log.order_by("number")] == [500, 204]


def test_a_receiver_that_keeps_failing_is_retried_then_disabled(hooks, api, receiver):
    receiver.status = 500
    sub = _subscribe(api, receiver)
    c = Cluster.objects.create(name="d", status="available", kubeconfig="x")
    _flip(c, 1)
    receiver.wait_for(4)
    wait_for(lambda: not Subscription.objects.get(pk=sub["id"]).enabled, what="subscription disabled")
    row = Subscription.objects.get(pk=sub["id"])
    assert row.consecutive_failures == 4 and "4 consecutive failed attempts" in row.disabled_reason
    assert list(Attempt.objects.values_list("status_code", flat=True)) == [500] * 4
    disabled = Event.objects.get(type="io.bud.webhook.subscription.disabled")
    assert disabled.data["subscription"] == sub["id"]
    # Disabled: nothing more goes out, whoever asks.
    assert services.deliver_line(sub["id"], f"clusters/{c.pk}") == 0
    assert len(receiver.requests) == 4
    # Enabled again by hand: the count starts over and the waiting delivery goes out.
    receiver.status = 204
    answer = api.patch(f"/webhooks/{sub['id']}", {"enabled": True}, format="json")
    assert answer.status_code == 200 and answer.json()["consecutive_failures"] == 0
    receiver.wait_for(5)
    wait_for(
        lambda: Delivery.objects.filter(status="delivered").count() == 1, what="delivered after enabling"
    )


def test_a_worker_killed_mid_delivery_delivers_it_again(hooks, api, receiver):
    receiver.block = True
    sub = _subscribe(api, receiver)
    c = Cluster.objects.create(name="e", status="available", kubeconfig="x")
    _flip(c, 1)
    assert receiver.blocked.wait(30), "the delivery never reached the receiver"
    hooks.kill()  # SIGKILL while the POST waits for its answer
    receiver.block = False
    receiver.release.set()
    hooks.start()

    def delivered_again():
        services.sweep()  # what the beat does every 10 s: lines whose lease ran out go out again
        return len(receiver.requests) >= 2

    wait_for(delivered_again, timeout=30, interval=0.5, what="the delivery to be posted again")
    first, second = receiver.requests[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.signature_valid(sub["secret"])
    wait_for(lambda: Delivery.objects.get().status == "delivered", what="the delivery recorded as delivered")
    assert Delivery.objects.get().attempts == 2


def test_a_slow_receiver_never_delays_the_state_change(hooks, api, receiver):
    receiver.block = True
    _subscribe(api, receiver)
    c = Cluster.objects.create(name="f", status="available", kubeconfig="x")
    _flip(c, 1)
    assert receiver.blocked.wait(30)
    # The receiver holds the first POST; the next state change commits regardless.
    assert cluster_services.set_status(c, "available", "back")
    assert Cluster.objects.get(pk=c.pk).status == "available" and not receiver.release.is_set()
    assert Event.objects.filter(subject=f"clusters/{c.pk}").count() == 2
    receiver.block = False
    receiver.release.set()
    got = receiver.wait_for(2)
    assert [r.event["data"]["reason"] for r in got] == ["flip 0", "back"]


def test_rotate_secret_and_redeliver(hooks, api, receiver):
    sub = _subscribe(api, receiver)
    c = Cluster.objects.create(name="g", status="available", kubeconfig="x")
    _flip(c, 1)
    receiver.wait_for(1)
    rotated = api.post(f"/webhooks/{sub['id']}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["secret"] != sub["secret"]
    delivery = Delivery.objects.get()
    wait_for(lambda: Delivery.objects.get().status == "delivered", what="delivered")
    again = api.post(f"/webhooks/{sub['id']}/deliveries/{delivery.pk}/redeliver")
    assert again.status_code == 202, again.content
    [_, second] = receiver.wait_for(2)
    assert second.headers["webhook-id"] == str(delivery.event.id)
    assert second.signature_valid(rotated.json()["secret"]) and not second.signature_valid(sub["secret"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url, loopback, message",
    [
        ("http://169.254.169.254/latest/meta-data", True, "metadata"),
        ("http://127.0.0.1:9/hook", False, "loopback"),
        ("ftp://hooks.example.com/x", True, "https://"),
        ("https://hooks.example.com/x#frag", True, "fragment"),
        ("https://user:pw@hooks.example.com/x", True, "user info"),
        ("https://hooks.example.com/a b", True, "whitespace"),
    ],
)
def test_refused_urls_change_nothing(api, settings, url, loopback, message):
    settings.WEBHOOK_ALLOW_LOOPBACK = loopback
    answer = api.post("/webhooks", {"name": "bad", "url": url}, format="json")
    assert answer.status_code == 400, answer.content
    assert message in answer.json()["errors"]["url"][0]
    assert "pw" not in answer.content.decode() or message != "user info"
    assert not Subscription.objects.exists()


@pytest.mark.django_db
def test_bad_event_types_and_unknown_fields_are_refused(api):
    bad = api.post(
        "/webhooks", {"name": "x", "url": "https://hooks.example.com/", "event_types": ["NO!"]}, format="json"
    )
    assert bad.status_code == 400 and "event_types" in bad.json()["errors"]
    unknown = api.post(
        "/webhooks", {"name": "x", "url": "https://hooks.example.com/", "secret": "whsec_mine"}, format="json"
    )
    assert unknown.status_code == 400 and "secret" in unknown.json()["errors"]
    assert not Subscription.objects.exists()


@pytest.mark.django_db
def test_admin_shows_the_secret_once_and_never_again(client, admin_user):
    client.force_login(admin_user)
    answer = client.post(
        "/admin/webhooks/subscription/add/",
        {
            "name": "console",
            "url": "https://hooks.example.com/in",
            "event_types": "io.bud.deployment.*",
            "enabled": "on",
        },
        follow=True,
    )
    assert answer.status_code == 200
    sub = Subscription.objects.get(name="console")
    assert sub.event_types == ["io.bud.deployment.*"]
    assert sub.secret in answer.content.decode()
    change = client.get(f"/admin/webhooks/subscription/{sub.pk}/change/")
    assert change.status_code == 200 and sub.secret not in change.content.decode()
    listing = client.get("/admin/webhooks/subscription/")
    assert sub.secret not in listing.content.decode()
    assert "hooks.example.com/in" not in listing.content.decode()  # the receiver column shows the host only


@pytest.mark.django_db
def test_redeliver_needs_its_permission(api_noperm):
    sub = Subscription.objects.create(
        name="p", url="https://hooks.example.com/", secret=services.new_secret()
    )
    with transaction.atomic():
        event = events.emit("run.started", "runs/p", {})
    events.position_pending()
    event.refresh_from_db()
    d = Delivery.objects.create(subscription=sub, event=event, position=event.position, subject="runs/p")
    assert api_noperm.post(f"/webhooks/{sub.pk}/deliveries/{d.pk}/redeliver").status_code == 403
    assert api_noperm.get("/webhooks").status_code == 403
