"""Webhook delivery: at least once, in order per subject, signed as Standard Webhooks sign.

Flow
----
1. A commit that wrote outbox events (``core.events``) sends ``webhooks.dispatch`` when a subscription is
   enabled. The dispatcher numbers the committed events (``core.events.position_pending``), then, holding its
   ``Cursor`` row, creates one ``Delivery`` per (matching subscription, event) after the cursor and moves the
   cursor, in one transaction. Each (subscription, subject) that got a delivery is a *line*; one
   ``webhooks.deliver`` message per line goes out when that transaction commits.
2. ``deliver_line`` posts the line's head (its pending delivery with the lowest position) and goes on down the
   line while the receiver answers 2xx. A later delivery never overtakes an earlier one of the same subject:
   while the head waits for a retry, the line waits too.
3. Before posting, the head is leased (``leased_until``, compare-and-set) and the lease is committed, so two
   workers never post it at once. A worker killed mid-POST leaves the lease to run out; the beat sweep
   (``webhooks.sweep``) then sends the line again: the event is delivered once more, never lost.
4. A failed attempt (no answer within ``WEBHOOK_TIMEOUT``, a refused address, or a non-2xx status) is logged as an
   ``Attempt`` and retried after an exponential backoff with full jitter (``WEBHOOK_RETRY_BASE_SECONDS`` doubling
   up to ``WEBHOOK_RETRY_MAX_SECONDS``). A delivery still failing ``WEBHOOK_RETRY_WINDOW_SECONDS`` after it was
   created is given up (``failed``) and the line moves on. ``WEBHOOK_DISABLE_AFTER`` consecutive failed attempts
   of one subscription disable it, with an ``io.bud.webhook.subscription.disabled`` event.

Signing (https://www.standardwebhooks.com/): headers ``webhook-id`` (the event's id, the same on every retry, for
the receiver's deduplication), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the base64 part of the ``whsec_``
secret), computed by the reference package ``standardwebhooks``. The tests check the signatures against the
specification's formula computed by hand.

The body is the event in CloudEvents 1.0 structured JSON (``application/cloudevents+json``).

Outbound address: the URL is judged by ``core.netguard`` when the subscription is saved and its host again at
every connection, pinned to the checked IP (``core.gateway.pinned_client``); loopback only with
``WEBHOOK_ALLOW_LOOPBACK``. Logs name the subscription and the URL's host only: a URL's path or query often
carries the receiver's own secret.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from standardwebhooks import Webhook as StandardWebhook

from core import events as outbox
from core import netguard
from core.models import Event

from .models import Attempt, Cursor, Delivery, DeliveryStatus, Subscription

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
CONTENT_TYPE = "application/cloudevents+json"
DISPATCH_BATCH = 1000
LINE_BATCH = 200  # deliveries posted by one deliver_line call before it hands the line to a fresh message


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


# --- subscriptions ---------------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def check_webhook_url(url: str) -> str:
    """The URL as it will be posted to, or ``netguard.AddressRefused`` saying what is wrong.

    The outbound-address guard judges scheme, host and port; unlike a cluster's URL a webhook's may carry a
    query (many receivers put their token there). Fragments and user info are refused."""
    if not isinstance(url, str) or not url.strip():
        raise netguard.AddressRefused("the webhook URL is missing")
    url = url.strip()
    if any(ch.isspace() or ord(ch) < 0x20 or ch in "\\\x7f" for ch in url):
        raise netguard.AddressRefused(
            "the webhook URL contains whitespace, backslashes or control characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise netguard.AddressRefused(f"the webhook URL is not a valid URL ({exc})") from None
    if parts.fragment:
        raise netguard.AddressRefused("the webhook URL must not have a fragment")
    netguard.check_url(
        urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        "the webhook URL",
        schemes=("https", "http"),
        allow_loopback=bool(_setting("WEBHOOK_ALLOW_LOOPBACK", False)),
    )
    return url


check_event_types = outbox.check_types


def url_host(url: str) -> str:
    """What logs and errors may say about a URL: its scheme and host, never its path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


# --- signing ----------------------------------------------------------------------------------------------------


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}`` (the reference package's signer)."""
    return StandardWebhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)


def body_of(event: Event) -> bytes:
    return json.dumps(event.cloudevent(), cls=DjangoJSONEncoder, separators=(",", ":")).encode()


# --- dispatch ---------------------------------------------------------------------------------------------------

# Subscriptions are looked up at most this often per process before a commit decides whether to wake the
# dispatcher (the beat sweep delivers anything a stale answer left behind).
_SUBSCRIBED_TTL = 5.0
_subscribed: tuple[float, bool] = (0.0, False)


def subscriptions_enabled(*, refresh: bool = False) -> bool:
    global _subscribed
    checked_at, value = _subscribed
    now = time.monotonic()
    if refresh or now - checked_at > _SUBSCRIBED_TTL:
        value = Subscription.objects.filter(enabled=True).exists()
        _subscribed = (now, value)
    return value


def forget_subscriptions() -> None:
    """Make the next commit look the subscriptions up again (after one is created, enabled or disabled)."""
    global _subscribed
    _subscribed = (0.0, False)


def on_events_committed(sender: Any = None, **kwargs: Any) -> None:
    """``core.signals.events_committed``: wake the dispatcher when someone is listening."""
    if subscriptions_enabled():
        wake_dispatcher()


# A dispatch message already waiting covers every event committed before it starts: while this key exists (set
# when the message is sent, deleted by the dispatcher before it reads), commits send no other. The expiry bounds
# the harm of a lost message; the beat sweep dispatches anyway.
_PENDING_KEY = "budcluster:webhooks:dispatch-pending"
_PENDING_MS = 5000
_redis: tuple[str, Any] | None = None


def _pending_flag() -> Any:
    """A Redis client on the broker (None for other brokers: every commit then sends its own message)."""
    global _redis
    url = str(_setting("CELERY_BROKER_URL", ""))
    if not url.startswith(("redis://", "rediss://")):
        return None
    if _redis is None or _redis[0] != url:
        import redis

        _redis = (url, redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0))
    return _redis[1]


def wake_dispatcher() -> None:
    """Ask a worker to dispatch now (after a commit that wrote events), unless a dispatch is already waiting. A
    broker that is down is not the state change's problem: the beat sweep dispatches what this message would
    have."""
    from .tasks import dispatch

    try:
        flag = _pending_flag()
        if flag is not None and not flag.set(_PENDING_KEY, b"1", nx=True, px=_PENDING_MS):
            return
        dispatch.apply_async(retry=False)
    except Exception as exc:  # any broker error: the sweep covers it
        logger.warning("webhooks: could not wake the dispatcher (%s); the sweep will", type(exc).__name__)


def dispatch() -> int:
    """Turn new events into deliveries and start their lines; returns how many deliveries were created."""
    try:
        flag = _pending_flag()
        if flag is not None:
            flag.delete(_PENDING_KEY)  # before reading: a commit from now on sends its own message
    except Exception as exc:  # the flag expires by itself
        logger.warning("webhooks: could not clear the dispatch flag (%s)", type(exc).__name__)
    outbox.position_pending()
    created = 0
    Cursor.objects.get_or_create(name="webhooks")
    while True:
        with transaction.atomic():
            cursor = Cursor.objects.select_for_update().get(name="webhooks")
            events = list(
                Event.objects.filter(position__gt=cursor.position)
                .order_by("position")
                .values_list("pk", "position", "type", "subject")[:DISPATCH_BATCH]
            )
            if not events:
                return created
            subs = list(Subscription.objects.filter(enabled=True).only("pk", "event_types"))
            rows = [
                Delivery(subscription_id=s.pk, event_id=pk, position=pos, subject=subject)
                for pk, pos, etype, subject in events
                for s in subs
                if s.matches(etype)
            ]
            Delivery.objects.bulk_create(rows, batch_size=500, ignore_conflicts=True)
            cursor.position = events[-1][1]
            cursor.save(update_fields=["position"])
            lines = sorted({(d.subscription_id, d.subject) for d in rows})
            transaction.on_commit(lambda lines=lines: _send_lines(lines), robust=True)
            created += len(rows)
        if len(events) < DISPATCH_BATCH:
            return created


def _send_lines(lines: list[tuple[int, str]], countdown: float | None = None) -> None:
    from .tasks import deliver

    for sub_id, subject in lines:
        try:
            deliver.apply_async((sub_id, subject), countdown=countdown, retry=False)
        except Exception as exc:  # the sweep sends due lines again
            logger.warning("webhooks: could not queue a delivery (%s); the sweep will", type(exc).__name__)
            return


# --- delivering a line --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status_code: int | None
    latency_ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver_line(subscription_id: int, subject: str) -> int:
    """Post the line's deliveries in order until one fails, the line is empty or its head is not due yet.
    Returns how many were delivered."""
    delivered = 0
    subscription = Subscription.objects.filter(pk=subscription_id, enabled=True).first()
    if subscription is None:
        return 0
    for _ in range(LINE_BATCH):
        delivery = _claim_head(subscription, subject)
        if delivery is None:
            return delivered
        outcome = post(subscription, delivery.event, delivery)
        if not _record(delivery, subscription, outcome):
            return delivered
        delivered += 1
    _send_lines([(subscription_id, subject)])  # a long line: let other lines have the worker meanwhile
    return delivered


def _lease_seconds() -> float:
    timeout = float(_setting("WEBHOOK_TIMEOUT", 10.0))
    return float(_setting("WEBHOOK_LEASE_SECONDS", 0) or timeout + 30.0)


def _claim_head(subscription: Subscription, subject: str) -> Delivery | None:
    """The line's head with its event, leased to this worker (committed), or None when there is nothing to post
    now: an empty line, a head not due yet, a head another worker holds, or a subscription disabled meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        head = (
            Delivery.objects.filter(
                subscription_id=subscription.pk,
                subject=subject,
                status=DeliveryStatus.PENDING,
                subscription__enabled=True,
            )
            .select_related("event")
            .order_by("position")
            .first()
        )
        if head is None or head.next_attempt_at > now:
            return None
        if head.leased_until is not None and head.leased_until > now:
            return None  # another worker is posting it; its outcome decides what comes next
        lease = now + timedelta(seconds=_lease_seconds())
        won = (
            Delivery.objects.filter(pk=head.pk, status=DeliveryStatus.PENDING)
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
            .update(leased_until=lease, attempts=F("attempts") + 1)
        )
        if not won:
            return None
    head.attempts += 1
    head.leased_until = lease
    return head


# Clients per URL, reused for this many seconds (kept-alive connections; the host is checked again after).
_CLIENT_TTL = 60.0
_clients: dict[str, tuple[float, Any]] = {}
_clients_lock = threading.Lock()


def _client(url: str, timeout: float):
    from core.gateway import pinned_client

    now = time.monotonic()
    with _clients_lock:
        cached = _clients.get(url)
        if cached is not None and now - cached[0] < _CLIENT_TTL:
            return cached[1]
    client = pinned_client(
        url,
        timeout=timeout,
        max_response_bytes=64 * 1024,
        allow_loopback=bool(_setting("WEBHOOK_ALLOW_LOOPBACK", False)),
    )
    with _clients_lock:
        old = _clients.pop(url, None)
        _clients[url] = (now, client)
    if old is not None:
        old[1].close()
    return client


def _drop_client(url: str) -> None:
    with _clients_lock:
        old = _clients.pop(url, None)
    if old is not None:
        old[1].close()


def post(subscription: Subscription, event: Event, delivery: Delivery) -> Outcome:
    """One signed POST of ``event`` to the subscription's URL; never raises for the receiver's faults."""
    import httpx

    timeout = float(_setting("WEBHOOK_TIMEOUT", 10.0))
    body = body_of(event)
    timestamp = int(time.time())
    msg_id = str(event.id)
    headers = {
        "content-type": CONTENT_TYPE,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(subscription.secret, msg_id, timestamp, body),
        "ce-attempt": str(delivery.attempts),
    }
    started = time.perf_counter()
    try:
        client = _client(subscription.url, timeout)
        response = client.post(subscription.url, content=body, headers=headers)
        response.read()
        return Outcome(response.status_code, (time.perf_counter() - started) * 1000)
    except netguard.AddressRefused as exc:
        return Outcome(None, (time.perf_counter() - started) * 1000, f"address refused: {exc}"[:500])
    except (httpx.HTTPError, OSError) as exc:
        _drop_client(subscription.url)
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__
        return Outcome(None, (time.perf_counter() - started) * 1000, f"{url_host(subscription.url)}: {what}")


def backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter (AWS's "full jitter")."""
    base = float(_setting("WEBHOOK_RETRY_BASE_SECONDS", 5.0))
    cap = float(_setting("WEBHOOK_RETRY_MAX_SECONDS", 3600.0))
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


def _record(delivery: Delivery, subscription: Subscription, outcome: Outcome) -> bool:
    """Store the attempt and its consequences; True when the line may go on."""
    now = timezone.now()
    error = outcome.error or ("" if outcome.ok else f"HTTP {outcome.status_code}")
    retry_in: float | None = None
    with transaction.atomic():
        Attempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=now - timedelta(milliseconds=outcome.latency_ms),
            status_code=outcome.status_code,
            latency_ms=round(outcome.latency_ms, 3),
            error=error[:500],
        )
        if outcome.ok:
            Delivery.objects.filter(pk=delivery.pk).update(
                status=DeliveryStatus.DELIVERED, delivered_at=now, leased_until=None, last_error=""
            )
            if subscription.consecutive_failures:
                Subscription.objects.filter(pk=subscription.pk).update(consecutive_failures=0)
            return True
        window = float(_setting("WEBHOOK_RETRY_WINDOW_SECONDS", 3 * 86400))
        given_up = (now - delivery.created_at).total_seconds() >= window
        fields: dict[str, Any] = {"leased_until": None, "last_error": error[:500]}
        if given_up:
            fields["status"] = DeliveryStatus.FAILED
        else:
            retry_in = backoff(delivery.attempts)
            fields["next_attempt_at"] = now + timedelta(seconds=retry_in)
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
        Subscription.objects.filter(pk=subscription.pk).update(
            consecutive_failures=F("consecutive_failures") + 1
        )
        failures = Subscription.objects.filter(pk=subscription.pk).values_list(
            "consecutive_failures", flat=True
        )[0]
        limit = int(_setting("WEBHOOK_DISABLE_AFTER", 20))
        if limit and failures >= limit:
            disable(
                subscription, f"{failures} consecutive failed attempts (last: {error})", failures=failures
            )
            return False
        logger.info(
            "webhook %s: attempt %d of event %s failed (%s)%s",
            subscription.name,
            delivery.attempts,
            delivery.event_id,
            error,
            " ; given up" if given_up else f"; next in {retry_in:.1f} s",
        )
        if given_up:
            return True
        line = [(subscription.pk, delivery.subject)]
        transaction.on_commit(lambda: _send_lines(line, countdown=retry_in), robust=True)
    return False


def disable(subscription: Subscription, reason: str, *, failures: int | None = None) -> bool:
    """Disable a subscription with an event saying why (in the caller's transaction)."""
    updated = Subscription.objects.filter(pk=subscription.pk, enabled=True).update(
        enabled=False, disabled_reason=reason[:500], updated_at=timezone.now()
    )
    if updated:
        logger.warning("webhook %s disabled: %s", subscription.name, reason)
        outbox.emit(
            "webhook.subscription.disabled",
            f"webhooks/{subscription.pk}",
            {
                "subscription": subscription.pk,
                "name": subscription.name,
                "reason": reason,
                "failures": failures,
            },
        )
        transaction.on_commit(forget_subscriptions)
    return bool(updated)


def reenabled(subscription: Subscription) -> None:
    """A subscription enabled again by hand (in the caller's transaction): its failure count starts over and
    what waited goes out now, not at the retry time its last failure set."""
    Subscription.objects.filter(pk=subscription.pk).update(consecutive_failures=0, disabled_reason="")
    subscription.consecutive_failures, subscription.disabled_reason = 0, ""
    Delivery.objects.filter(subscription=subscription, status=DeliveryStatus.PENDING).update(
        next_attempt_at=timezone.now(), leased_until=None
    )
    transaction.on_commit(forget_subscriptions)
    transaction.on_commit(sweep, robust=True)


def redeliver(delivery: Delivery) -> None:
    """Send a delivery again (an operator's action): pending, due now, first in its line if it is the oldest."""
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, next_attempt_at=timezone.now(), leased_until=None
    )
    line = [(delivery.subscription_id, delivery.subject)]
    transaction.on_commit(lambda: _send_lines(line), robust=True)


# --- the beat sweep ------------------------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Dispatch what no wake-up dispatched, and send every line whose head is due (a retry whose message was
    lost, a lease a dead worker left behind)."""
    created = dispatch() if subscriptions_enabled(refresh=True) else 0
    now = timezone.now()
    due = list(
        Delivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lte=now, subscription__enabled=True
        )
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .values_list("subscription_id", "subject")
        .distinct()[:5000]
    )
    _send_lines(sorted(set(due)))
    return {"created": created, "lines": len(due)}


def cleanup() -> dict[str, int]:
    """Delete events (and their deliveries and attempts) older than ``EVENTS_RETENTION_DAYS``; events still
    waiting for a delivery are kept."""
    days = int(_setting("EVENTS_RETENTION_DAYS", 30))
    if days <= 0:
        return {"events": 0}
    cutoff = timezone.now() - timedelta(days=days)
    total = 0
    while True:
        batch = list(
            Event.objects.filter(time__lt=cutoff)
            .exclude(deliveries__status=DeliveryStatus.PENDING)
            .order_by("seq")
            .values_list("pk", flat=True)[:5000]
        )
        if not batch:
            return {"events": total}
        Event.objects.filter(pk__in=batch).delete()
        total += len(batch)
