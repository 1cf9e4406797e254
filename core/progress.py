"""Follow a run from a management command: print each new event and the progress until it ends."""

from __future__ import annotations

import time
from typing import TextIO

from .choices import RunStatus
from .models import Run, RunEvent


def follow_run(run: Run, out: TextIO, *, timeout: float = 1800.0, interval: float = 0.5) -> Run:
    """Print events as they arrive; return the finished run (or the run as it is at the timeout)."""
    seen = 0
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while True:
        events = list(RunEvent.objects.filter(run=run, id__gt=seen).order_by("id"))
        run.refresh_from_db()
        for event in events:
            seen = event.id
            out.write(f"[{event.created_at:%H:%M:%S}] {run.progress:5.1f}%  {event.message}\n")
            quiet_since = time.monotonic()
        if run.status in RunStatus.terminal():
            return run
        if time.monotonic() > deadline:
            out.write(f"still {run.status} after {timeout:.0f}s; follow it at /runs/{run.pk}\n")
            return run
        if run.status == RunStatus.PENDING and time.monotonic() - quiet_since > 15:
            out.write("waiting for a Celery worker to pick the run up (is `make run` or a worker running?)\n")
            quiet_since = time.monotonic()
        time.sleep(interval)
