"""What the apps built on clusters add to a cluster's API answer.

``clusters`` is the lower layer: it knows nothing of the apps that keep data per cluster (the hardware inventory).
Such an app registers a provider here from its ``AppConfig.ready()``, the way apps register admin classes and
signal receivers:

* the hardware app provides the per-cluster summary the cluster list shows (nodes, accelerators, free ones);
* the deployments app provides the count of a cluster's active deployments, which deletion refuses without
  ``force``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Cluster

SummaryProvider = Callable[[list[int]], dict[int, dict]]
DeploymentCounter = Callable[["Cluster"], int]

_summary_provider: SummaryProvider | None = None
_deployment_counter: DeploymentCounter | None = None


def provide_summary(provider: SummaryProvider) -> None:
    """Register the function that summarises clusters (``{cluster_id: summary}`` for a page of ids, in a bounded
    number of queries). One provider: a second, different one is a configuration error."""
    global _summary_provider
    _summary_provider = _only(_summary_provider, provider, "cluster summary provider")


def provide_deployment_counter(counter: DeploymentCounter) -> None:
    """Register the function that counts a cluster's active deployments."""
    global _deployment_counter
    _deployment_counter = _only(_deployment_counter, counter, "deployment counter")


def _only(current, new, what: str):
    if current is not None and current is not new:
        raise RuntimeError(f"a {what} is already registered: {current!r}")
    return new


def summaries(cluster_ids: list[int]) -> dict[int, dict]:
    """The registered provider's summaries of these clusters; empty when no app provides one."""
    if _summary_provider is None or not cluster_ids:
        return {}
    return _summary_provider(cluster_ids)


def active_deployments(cluster: Cluster) -> int:
    """How many deployments on this cluster are active; 0 when no app keeps deployments."""
    return _deployment_counter(cluster) if _deployment_counter is not None else 0
