"""One helper for the periodic sweeps that check many clusters at once (health, deployments, inventory).

Each item is handled in its own thread (the work is waiting on remote API servers, not CPU); every thread closes
the database connections it opened, so a sweep of many clusters does not leave one idle connection per thread
behind in a long-lived worker (Django opens one connection per thread and only closes it at request end, which
never comes in a worker thread). One item's exception is that item's result, never the whole sweep's.

With a ``deadline``, the sweep returns when it passes: items not finished by then get a ``TimeoutError`` as their
result and their threads are left to end by their own bounds (each item's work must be bounded itself, e.g. a
gateway call's total deadline), so one sweep of many slow clusters never runs into the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from django.db import connections

T = TypeVar("T")
R = TypeVar("R")


def sweep_each(
    items: Iterable[T],
    func: Callable[[T], R],
    *,
    workers: int = 8,
    name: str = "sweep",
    deadline: float | None = None,
) -> list[tuple[T, R | BaseException]]:
    """``func(item)`` for every item on up to ``workers`` threads; returns ``(item, result or exception)`` in the
    items' order. Items not done within ``deadline`` seconds (if given) get a ``TimeoutError``."""
    items = list(items)
    if not items:
        return []

    def one(item: T) -> R | BaseException:
        try:
            return func(item)
        except Exception as exc:  # one item's failure is its result; the sweep goes on
            return exc
        finally:
            connections.close_all()

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix=name)
    futures = [pool.submit(one, item) for item in items]
    done, _ = wait(futures, timeout=deadline)
    pool.shutdown(wait=deadline is None, cancel_futures=True)
    late = TimeoutError(f"not finished within the sweep's deadline of {deadline:g}s") if deadline else None
    return [(item, f.result() if f in done else late) for item, f in zip(items, futures, strict=True)]
