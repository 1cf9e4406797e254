"""How many messages wait in the broker's queues: the default queue (steps) and the polls queue (checks of
waiting steps).

Redis (production): kombu keeps a queue as a Redis list, one list per priority step (``celery``, and
``celery\\x06\\x163`` ... for priorities above 0); the depth is the sum of their lengths, read in one pipeline
round trip with short socket timeouts so a stuck broker costs the scrape at most ``BROKER_TIMEOUT``. Messages a
worker has taken but not acknowledged are not waiting and are not counted. The ``filesystem://`` broker of the
embedded profile keeps one file per message, named after its queue.

A broker that does not answer yields ``None``: the caller reports it down and leaves the depths out rather than
report an empty queue. The broker URL may hold a password: it is never logged or put in a label.
"""

from __future__ import annotations

import logging
import os
import threading

from django.conf import settings

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 2.0
PRIORITY_SEPARATOR = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def queue_names() -> list[str]:
    """The queues the service's workers consume: Celery's default queue and the polls queue."""
    default = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", None) or "celery"
    polls = getattr(settings, "WORKFLOW_POLL_QUEUE", None) or "polls"
    return list(dict.fromkeys([default, polls]))


def _redis(url: str):
    import redis

    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=BROKER_TIMEOUT
            )
            _clients[url] = client
        return client


def _redis_depths(url: str, queues: list[str]) -> dict[str, int]:
    prefix = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("global_keyprefix", "")
    pipe = _redis(url).pipeline(transaction=False)
    for queue in queues:
        for pri in PRIORITY_STEPS:
            pipe.llen(f"{prefix}{queue}{PRIORITY_SEPARATOR}{pri}" if pri else f"{prefix}{queue}")
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}


def _filesystem_depths(queues: list[str]) -> dict[str, int]:
    folder = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("data_folder_in", "")
    names = os.listdir(folder) if folder else []
    return {queue: sum(1 for name in names if name.endswith(f".{queue}.msg")) for queue in queues}


def depths() -> dict[str, int] | None:
    """Messages waiting per queue, or None when the broker did not answer (or is of a kind not read here)."""
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    queues = queue_names()
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            return _redis_depths(url, queues)
        if url.startswith("filesystem://"):
            return _filesystem_depths(queues)
    except Exception as exc:  # any broker failure is "down" for the scrape, never a 500
        # The exception's type only: a connection error's text may carry the broker's address.
        logger.warning("metrics: the broker did not answer the queue-depth read (%s)", type(exc).__name__)
        return None
    return None
