"""Helpers for the periodic sweeps that check many clusters at once (health, deployments, inventory).

``sweep_each`` (threads, for work that uses the database or blocking clients): each item is handled in its own
thread (the work is waiting on remote API servers, not CPU); every thread closes the database connections it opened,
so a sweep of many clusters does not leave one idle connection per thread behind in a long-lived worker (Django
opens one connection per thread and only closes it at request end, which never comes in a worker thread). One item's
exception is that item's result, never the whole sweep's.

With a ``deadline``, the sweep returns when it passes: items not finished by then get a ``TimeoutError`` as their
result and their threads are left to end by their own bounds (each item's work must be bounded itself, e.g. a
gateway call's total deadline), so one sweep of many slow clusters never runs into the next.

``sweep_async`` (coroutines, for work that only waits on the network, such as the cluster health probes of
``core.probe``): the items run on one event loop per process, on a thread of its own that lives as long as the
process (``sweep_loop``), so what the work keeps between sweeps (kept-alive connections, through
``loop_local``) stays usable from one sweep to the next. At most ``concurrency`` items are in flight; when the
deadline passes, the unfinished ones are cancelled (a coroutine, unlike a thread, can be stopped) and get a
``TimeoutError``. The caller's thread only waits, so the database is used before and after, never on the loop.
A forked child (Celery's prefork pool) starts its own loop: the parent's thread does not survive a fork.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

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


class _SweepLoop:
    """An event loop running for ever on a daemon thread, and the objects that live on it (``loop_local``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.local: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="sweep-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_loop: _SweepLoop | None = None
_loop_lock = threading.Lock()


def _forget_loop_after_fork() -> None:
    global _loop
    _loop = None  # its thread did not survive the fork; the next sweep starts one in this process


os.register_at_fork(after_in_child=_forget_loop_after_fork)


def sweep_loop() -> asyncio.AbstractEventLoop:
    """This process's sweep event loop (started on first use)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.pid != os.getpid() or not _loop.thread.is_alive():
            _loop = _SweepLoop()
        return _loop.loop


def loop_local(name: str, factory: Callable[[], T]) -> T:
    """An object that lives as long as the sweep loop (e.g. a connection pool); call on the loop's thread."""
    state = _loop
    if state is None or threading.current_thread() is not state.thread:
        raise RuntimeError("loop_local is for code running on the sweep loop")
    if name not in state.local:
        state.local[name] = factory()
    return state.local[name]


def run_on_sweep_loop(coro: Awaitable[R]) -> R:
    """Run ``coro`` on the sweep loop and wait for it; if this thread is interrupted while waiting (a task's soft
    time limit), the coroutine is cancelled too."""
    loop = sweep_loop()
    if _loop is not None and threading.current_thread() is _loop.thread:
        raise RuntimeError("run_on_sweep_loop cannot be called from the sweep loop itself")
    future = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


_PENDING = object()


def sweep_async(
    items: Iterable[T],
    func: Callable[[T], Awaitable[R]],
    *,
    concurrency: int = 64,
    deadline: float | None = None,
) -> list[tuple[T, R | BaseException]]:
    """``await func(item)`` for every item on the sweep loop, at most ``concurrency`` at once; returns ``(item,
    result or exception)`` in the items' order. Items not done within ``deadline`` seconds (if given) are
    cancelled and get a ``TimeoutError``."""
    items = list(items)
    if not items:
        return []
    results: list[Any] = [_PENDING] * len(items)

    async def run_all() -> None:
        indexes = iter(range(len(items)))

        async def lane() -> None:
            for i in indexes:  # one shared iterator: each lane takes the next item when it is free
                try:
                    results[i] = await func(items[i])
                except Exception as exc:  # one item's failure is its result; the sweep goes on
                    results[i] = exc

        lanes = [asyncio.ensure_future(lane()) for _ in range(max(1, min(concurrency, len(items))))]
        try:
            await asyncio.wait(lanes, timeout=deadline)
        finally:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    run_on_sweep_loop(run_all())
    late = TimeoutError(f"not finished within the sweep's deadline of {deadline:g}s") if deadline else None
    return [(item, late if r is _PENDING else r) for item, r in zip(items, results, strict=True)]
