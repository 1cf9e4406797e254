"""The shared refusal type and the shared sweep helper."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models import TextChoices

from core.errors import Refused
from core.sweep import sweep_each
from tests.worker import wait_for


class ExampleRefused(Refused):
    class Code(TextChoices):
        TAKEN = "taken", "The name is taken"

    default_status = 409


def test_refusal_carries_code_status_and_extra_fields():
    refused = ExampleRefused("name x is taken", code=ExampleRefused.Code.TAKEN, data={"name": "x"})
    assert (refused.code, refused.status) == ("taken", 409)
    assert refused.as_dict() == {"detail": "name x is taken", "code": "taken", "name": "x"}


def test_a_code_outside_the_enum_is_a_programming_error():
    with pytest.raises(ValueError, match="ExampleRefused has no code 'tkaen'"):
        ExampleRefused("typo", code="tkaen")


@pytest.mark.django_db(transaction=True)
def test_sweep_keeps_order_turns_exceptions_into_results_and_closes_thread_connections():
    backends: list[int] = []
    threads: set[str] = set()
    lock = threading.Lock()

    def work(n: int) -> int:
        with connection.cursor() as cursor:  # opens this thread's own connection
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        with lock:
            backends.append(pid)
            threads.add(threading.current_thread().name)
        if n == 3:
            raise RuntimeError("cluster 3 broke")
        return n * 10

    results = sweep_each(range(6), work, workers=4, name="probe")
    assert [item for item, _ in results] == list(range(6))
    assert [r for _, r in results if not isinstance(r, Exception)] == [0, 10, 20, 40, 50]
    assert isinstance(results[3][1], RuntimeError) and str(results[3][1]) == "cluster 3 broke"
    assert threads and all(name.startswith("probe") for name in threads)

    # Every worker thread closed its connection: PostgreSQL ends those backends (asynchronously, once it reads
    # the client's goodbye), so none is left idle in a long-lived worker.
    def closed() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [sorted(set(backends))]
            )
            return cursor.fetchone()[0] == 0

    wait_for(closed, timeout=10, what="the sweep threads' database connections to close")
    assert sweep_each([], work) == []
