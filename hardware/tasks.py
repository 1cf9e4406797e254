"""Celery tasks of the hardware app."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="hardware.refresh_all", acks_late=True)
def refresh_all() -> dict:
    """Periodic inventory refresh (beat, every 10 min by default) of every available cluster, in parallel."""
    from clusters.choices import ClusterStatus
    from clusters.models import Cluster
    from clusters.services import gateway_for
    from core.gateway import GatewayError

    from .services import refresh_inventory

    def one(cluster) -> tuple[str, str]:
        try:
            with gateway_for(cluster, timeout=30, reuse=False) as gw:  # threads: no shared clients
                refresh_inventory(cluster, gw)
            return cluster.name, "ok"
        except GatewayError as exc:
            return cluster.name, str(exc)

    clusters = list(Cluster.objects.filter(status=ClusterStatus.AVAILABLE))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(pool.map(one, clusters))
    failed = {k: v for k, v in results.items() if v != "ok"}
    if failed:
        logger.warning("inventory refresh failed for %d cluster(s): %s", len(failed), failed)
    return {"refreshed": len(results) - len(failed), "failed": failed}
