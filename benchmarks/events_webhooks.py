"""Events and webhooks: what the outbox costs a state change, and how fast and how late webhooks arrive.

Three measurements, each beside its baseline in the same run (PostgreSQL, Redis, a real `celery worker`):

1. **Event-write overhead per transition.** Cluster status transitions through ``clusters.services.set_status``
   (compare-and-set UPDATE, the cluster's log row, the outbox event, one transaction), alternating rounds with the
   outbox write switched off in this process (``core.events.emit`` replaced by a no-op) and on. Printed: ms per
   transition each way and the ratio with/without.
2. **Deliveries.** A receiver on loopback (a threaded HTTP server answering 204) subscribed to every event; the
   script makes ``--events`` status changes spread over ``--subjects`` clusters as fast as it can, and a worker
   (``--concurrency`` processes on the queues the service uses) delivers them. Printed: deliveries per second from
   the first change to the last delivery, and the delay from each change's commit to its arrival (p50, p99, max),
   with the count of events lost (must be 0) and of events that arrived out of order for their subject (must be 0).
3. **/metrics at scale** lives in ``benchmarks/metrics_scale.py``.

Usage: python benchmarks/events_webhooks.py [--transitions 2000] [--events 2000] [--subjects 50] [--concurrency 2]
(DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/budcluster_bench_events, CELERY_BROKER_URL to
Redis db 3.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
os.environ.setdefault("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/budcluster_bench_events")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["WEBHOOK_ALLOW_LOOPBACK"] = "1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def transition_overhead(rounds: int, per_round: int) -> None:
    from unittest import mock

    from clusters import services
    from clusters.models import Cluster

    cluster = Cluster.objects.create(name="bench-overhead", status="available", kubeconfig="x")
    timings: dict[bool, list[float]] = {True: [], False: []}
    states = ("not_available", "available")
    for _ in range(rounds):
        for with_events in (False, True):
            patch = mock.patch.object(services.core_events, "emit") if not with_events else None
            if patch:
                patch.start()
            started = time.perf_counter()
            for i in range(per_round):
                services.set_status(cluster, states[i % 2], f"bench {i}")
            timings[with_events].append((time.perf_counter() - started) / per_round)
            if patch:
                patch.stop()
    without = statistics.median(timings[False]) * 1000
    with_ = statistics.median(timings[True]) * 1000
    print(
        f"1. event-write overhead per cluster status transition ({rounds} alternating rounds x {per_round}):"
    )
    print(f"   without the outbox event: {without:.3f} ms/transition (median of rounds)")
    print(f"   with the outbox event:    {with_:.3f} ms/transition")
    print(f"   ratio with/without:       {with_ / without:.2f}")


class _Receiver(BaseHTTPRequestHandler):
    arrivals: list[tuple[float, str, str]] = []  # (wall time, webhook-id, subject)
    lock = threading.Lock()

    def do_POST(self):
        import json

        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        now = time.time()
        with self.lock:
            self.arrivals.append((now, self.headers["webhook-id"], json.loads(body)["subject"]))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def deliveries(events_total: int, subjects: int, concurrency: int) -> None:
    from django.conf import settings

    from clusters import services
    from clusters.models import Cluster
    from core.models import Event
    from webhooks.models import Delivery, Subscription
    from webhooks.services import forget_subscriptions, new_secret

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    Subscription.objects.create(name="bench", url=url, secret=new_secret())
    forget_subscriptions()
    clusters = [
        Cluster.objects.create(name=f"bench-{i}", status="available", kubeconfig="x") for i in range(subjects)
    ]
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    log = open(ROOT / "var" / "bench-events-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "budcluster_site", "worker", "-l", "WARNING", "-c", str(concurrency),
         "-Q", f"celery,{settings.WORKFLOW_POLL_QUEUE}", "-n", "bench-events@%h", "--without-mingle",
         "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        from budcluster_site.celery import app

        # The worker is up before the clock starts: its start-up is not a delivery delay.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not app.control.ping(
            timeout=1.0, destination=[f"bench-events@{os.uname().nodename}"]
        ):
            pass
        started = time.time()
        states = ("not_available", "available")
        for i in range(events_total):
            cluster = clusters[i % subjects]
            services.set_status(cluster, states[(i // subjects) % 2], f"bench {i}")
        made = time.time()
        wait_until = time.monotonic() + max(120, events_total / 10)
        while len(_Receiver.arrivals) < events_total and time.monotonic() < wait_until:
            time.sleep(0.2)
        finished = time.time()
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        server.shutdown()
    times = {str(eid): t.timestamp() for eid, t in Event.objects.values_list("id", "time")}
    arrivals = list(_Receiver.arrivals)
    first = {}
    for when, eid, _subject in arrivals:
        first.setdefault(eid, when)
    delays = [first[eid] - times[eid] for eid in first if eid in times]
    positions = dict(Event.objects.values_list("id", "position"))
    out_of_order = 0
    last: dict[str, int] = {}
    for _when, eid, subject in sorted(arrivals):
        pos = positions.get(uuid.UUID(eid))
        if pos is not None and pos < last.get(subject, -1):
            out_of_order += 1
        last[subject] = max(last.get(subject, -1), pos or -1)
    lost = events_total - len(first)
    span = (max(first.values()) if first else finished) - started
    print(
        f"2. webhook deliveries: {events_total} status changes over {subjects} clusters, worker -c {concurrency}"
    )
    print(f"   changes made in {made - started:.2f} s ({events_total / (made - started):.0f}/s)")
    print(f"   delivered {len(first)} ({len(arrivals) - len(first)} repeats) in {span:.2f} s from the first change: "
          f"{len(first) / span:.0f} deliveries/s")  # fmt: skip
    if delays:
        print(f"   delay change committed -> delivered: p50 {percentile(delays, 50) * 1000:.0f} ms, "
              f"p99 {percentile(delays, 99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")  # fmt: skip
    print(f"   lost: {lost}, out of order for their subject: {out_of_order}, "
          f"deliveries recorded delivered: {Delivery.objects.filter(status='delivered').count()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transitions", type=int, default=2000, help="status transitions for the overhead figure"
    )
    parser.add_argument("--events", type=int, default=2000, help="status changes delivered by webhook")
    parser.add_argument("--subjects", type=int, default=50, help="clusters the changes are spread over")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes delivering")
    args = parser.parse_args()

    from benchmarks.common import setup_django

    setup_django()
    import redis
    from django.conf import settings

    from clusters.models import Cluster
    from core.models import Event

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    from webhooks.models import Subscription

    Subscription.objects.all().delete()
    Cluster.objects.filter(name__startswith="bench").delete()
    Event.objects.all().delete()
    rounds = 10
    transition_overhead(rounds, max(1, args.transitions // (2 * rounds)))
    Event.objects.all().delete()
    deliveries(args.events, args.subjects, args.concurrency)


if __name__ == "__main__":
    main()
