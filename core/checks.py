"""System checks for settings whose combination matters (``manage.py check`` and every process start)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register()
def workflow_liveness(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """A running step stamps its run every WORKFLOW_HEARTBEAT_INTERVAL seconds and the engine only re-stamps a
    run at step start when its last stamp is older than half of WORKFLOW_STALE_AFTER; a heartbeat slower than
    that would let the reaper resume healthy runs."""
    heartbeat = float(settings.WORKFLOW_HEARTBEAT_INTERVAL)
    stale = float(settings.WORKFLOW_STALE_AFTER)
    if heartbeat >= stale / 2:
        return [
            checks.Error(
                f"WORKFLOW_HEARTBEAT_INTERVAL ({heartbeat:g}s) must be less than half of WORKFLOW_STALE_AFTER "
                f"({stale:g}s), or the reaper would resume runs whose workers are alive.",
                hint="Lower WORKFLOW_HEARTBEAT_INTERVAL or raise WORKFLOW_STALE_AFTER.",
                id="core.E001",
            )
        ]
    return []
