"""The Celery application.

Tasks live in each app's ``tasks.py`` (autodiscovered). Beat schedules are rows of django-celery-beat, created
by data migrations and editable in the admin (Periodic tasks), never hard-coded here.

Every task has a soft and a hard time limit (``CELERY_TASK_SOFT_TIME_LIMIT``, ``CELERY_TASK_TIME_LIMIT``). At the
soft limit the pool raises ``SoftTimeLimitExceeded`` inside the task; a workflow step turns any exception into a
failed step with its message, so the exception raised here names the limit and the setting instead of billiard's
bare ``SoftTimeLimitExceeded()``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")

app = Celery("budcluster")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _import_before_fork(**kwargs) -> None:
    """Import what every step needs but its library loads lazily (httpx imports httpcore on its first client)
    once in the parent, so the forked pool processes share it instead of each paying for it on its first step.
    Only pure-Python modules: the Helm engine's native library starts threads and must load after the fork."""
    import httpcore  # noqa: F401


class TimeLimitReached(SoftTimeLimitExceeded):
    """``SoftTimeLimitExceeded`` whose text is its message (billiard's shows the exception's repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "soft time limit reached"


def _soft_time_limit(signum: int, frame: Any) -> None:
    """The pool's soft-limit signal, raised as an exception that says what happened."""
    from celery import current_task

    limit = None
    if current_task is not None:
        limit = (current_task.request.timelimit or (None, None))[1] or current_task.soft_time_limit
    limit = limit or app.conf.task_soft_time_limit
    raise TimeLimitReached(
        f"stopped after running for its soft time limit of {float(limit):g} s (CELERY_TASK_SOFT_TIME_LIMIT); "
        "a step that long is stuck or needs a higher limit"
    )


@signals.task_prerun.connect
def _name_the_soft_time_limit(**kwargs: Any) -> None:
    """Swap billiard's soft-limit handler for ours in the pool process that runs tasks. billiard installs its
    handler after ``worker_process_init``, so the first task of each process does the swap; only billiard's own
    handler is replaced (SIGUSR1 means something else in a worker's main process)."""
    from billiard.pool import soft_timeout_sighandler

    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) is soft_timeout_sighandler:
        signal.signal(signal.SIGUSR1, _soft_time_limit)
