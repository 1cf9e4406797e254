"""``FleetCollector``: every /metrics family, computed from the database when Prometheus scrapes.

The number of queries is fixed (eight, plus one broker round trip), whatever the number of clusters, nodes,
deployments or runs: each family group is one aggregate query (``GROUP BY``), never a query per row.

Families (all prefixed ``budcluster_``):

==========================================  =========  ===========================  ================================
name                                        type       labels                       source
==========================================  =========  ===========================  ================================
clusters                                    gauge      status                       Cluster
cluster_available                           gauge      cluster                      Cluster (1 if ``available``)
nodes / nodes_ready                         gauge      cluster                      Node
gpus_total / gpus_free                      gauge      cluster, type, model         Node (accelerators: GPUs, HPUs)
deployments                                 gauge      status                       Deployment (``deleted`` left out)
runs_started_total                          counter    kind                         Run (``started_at`` set)
runs_finished_total                         counter    kind, outcome                Run (terminal status)
runs_active                                 gauge      kind, status                 Run (pending/running/cleaning up)
step_duration_seconds                       histogram  workflow, step               RunStep (finished steps)
queue_depth                                 gauge      queue                        broker (Redis list lengths)
broker_up                                   gauge      -                            broker
health_sweep_duration_seconds               summary    sweep                        SweepTiming
health_sweep_last_duration_seconds          gauge      sweep                        SweepTiming
health_sweep_last_timestamp_seconds         gauge      sweep                        SweepTiming
webhook_deliveries                          gauge      status                       Delivery (webhooks)
webhook_attempts_total                      counter    outcome                      Attempt (webhooks)
metrics_scrape_duration_seconds             gauge      -                            this collector
==========================================  =========  ===========================  ================================

Counters and histograms read from tables are exact across processes (see the package docstring); a row deleted
from ``Run``/``RunStep`` lowers them, which Prometheus reads as a counter reset (``rate`` copes with it).

A step's duration is ``finished_at - started_at`` of its row: its whole time, retries and waits between checks
included, which is what an operator waiting on it sees. Only steps that ran and ended are counted (succeeded,
failed or cancelled; skipped steps never ran).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from core.choices import RunStatus, StepStatus
from core.models import Run, RunStep
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from hardware.choices import AcceleratorType
from hardware.models import Node

from . import queues
from .models import SweepTiming

# Upper bounds (seconds) of the step duration buckets: from an API call (under a second) to a Terraform apply or a
# large model transfer (hours); the last bucket, +Inf, is every finished step.
STEP_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
FINISHED_STEPS = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED)
UNKNOWN_MODEL = "unknown"


def _bucket_field(index: int) -> str:
    return f"le_{index}"


class FleetCollector:
    """A ``prometheus_client`` collector (``collect()`` only: registered with ``auto_describe=False`` so that
    registering it queries nothing)."""

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        yield from self._clusters_and_nodes()
        yield from self._deployments()
        yield from self._runs()
        yield from self._steps()
        yield from self._queues()
        yield from self._sweeps()
        yield from self._webhooks()
        scrape = GaugeMetricFamily(
            "budcluster_metrics_scrape_duration_seconds", "Time this scrape took to compute every figure."
        )
        scrape.add_metric([], time.monotonic() - started)
        yield scrape

    # --- fleet --------------------------------------------------------------------------------------------------

    def _clusters_and_nodes(self) -> Iterator[Metric]:
        clusters = list(Cluster.objects.order_by("name").values_list("pk", "name", "status"))  # query 1
        by_status = dict.fromkeys(ClusterStatus.values, 0)
        for _, _, status in clusters:
            by_status[status] = by_status.get(status, 0) + 1
        family = GaugeMetricFamily("budcluster_clusters", "Clusters by status.", labels=["status"])
        for status, n in by_status.items():
            family.add_metric([status], n)
        yield family

        available = GaugeMetricFamily(
            "budcluster_cluster_available",
            "1 while the cluster's status is available (its API server answered the last health sweep), else 0.",
            labels=["cluster"],
        )
        for _, name, status in clusters:
            available.add_metric([name], 1 if status == ClusterStatus.AVAILABLE else 0)
        yield available

        rows = (  # query 2: nodes and accelerators of every cluster, grouped
            Node.objects.values("cluster_id", "accelerator_type", "accelerator_model")
            .annotate(
                n=Count("pk"),
                ready=Count("pk", filter=Q(ready=True)),
                total=Sum("accelerator_count"),
                free=Sum("free_accelerators"),
            )
            .order_by()
        )
        names = {pk: name for pk, name, _ in clusters}
        nodes: dict[str, int] = dict.fromkeys(names.values(), 0)
        ready: dict[str, int] = dict.fromkeys(names.values(), 0)
        gpus: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            cluster = names.get(row["cluster_id"])
            if cluster is None:  # a node of a cluster created after query 1: the next scrape shows both
                continue
            nodes[cluster] += row["n"]
            ready[cluster] += row["ready"]
            if row["accelerator_type"] == AcceleratorType.CPU or not row["total"]:
                continue
            key = (cluster, row["accelerator_type"] or "", row["accelerator_model"] or UNKNOWN_MODEL)
            total = row["total"] or 0
            gpus[key][0] += total
            gpus[key][1] += min(row["free"] or 0, total)

        nodes_family = GaugeMetricFamily("budcluster_nodes", "Nodes of each cluster.", labels=["cluster"])
        ready_family = GaugeMetricFamily(
            "budcluster_nodes_ready", "Nodes of each cluster whose kubelet reports Ready.", labels=["cluster"]
        )
        for cluster in nodes:
            nodes_family.add_metric([cluster], nodes[cluster])
            ready_family.add_metric([cluster], ready[cluster])
        yield nodes_family
        yield ready_family

        labels = ["cluster", "type", "model"]
        total_family = GaugeMetricFamily(
            "budcluster_gpus_total",
            "Accelerator devices (GPUs, Gaudi HPUs) by cluster, type (cuda, rocm, hpu) and model.",
            labels=labels,
        )
        free_family = GaugeMetricFamily(
            "budcluster_gpus_free",
            "Accelerator devices not requested by any pod, by cluster, type and model.",
            labels=labels,
        )
        for key in sorted(gpus):
            total_family.add_metric(list(key), gpus[key][0])
            free_family.add_metric(list(key), gpus[key][1])
        yield total_family
        yield free_family

    def _deployments(self) -> Iterator[Metric]:
        counts = dict(  # query 3
            Deployment.objects.exclude(status=DeploymentStatus.DELETED)
            .values_list("status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        family = GaugeMetricFamily(
            "budcluster_deployments", "Deployments by status (deleted ones left out).", labels=["status"]
        )
        for status in DeploymentStatus.values:
            if status != DeploymentStatus.DELETED:
                family.add_metric([status], counts.get(status, 0))
        yield family

    # --- workflow engine ----------------------------------------------------------------------------------------

    def _runs(self) -> Iterator[Metric]:
        rows = (  # query 4
            Run.objects.values("kind", "status")
            .annotate(n=Count("pk"), started=Count("pk", filter=Q(started_at__isnull=False)))
            .order_by("kind", "status")
        )
        started: dict[str, int] = defaultdict(int)
        finished = CounterMetricFamily(
            "budcluster_runs_finished_total",
            "Runs that ended, by workflow kind and outcome (succeeded, failed, cancelled).",
            labels=["kind", "outcome"],
        )
        active = GaugeMetricFamily(
            "budcluster_runs_active",
            "Runs not ended yet, by workflow kind and status.",
            labels=["kind", "status"],
        )
        terminal, in_progress = RunStatus.terminal(), RunStatus.active()
        for row in rows:
            started[row["kind"]] += row["started"]
            if row["status"] in terminal:
                finished.add_metric([row["kind"], row["status"]], row["n"])
            elif row["status"] in in_progress:
                active.add_metric([row["kind"], row["status"]], row["n"])
        started_family = CounterMetricFamily(
            "budcluster_runs_started_total",
            "Runs whose first step started, by workflow kind.",
            labels=["kind"],
        )
        for kind, n in started.items():
            started_family.add_metric([kind], n)
        yield started_family
        yield finished
        yield active

    def _steps(self) -> Iterator[Metric]:
        duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        buckets = {
            _bucket_field(i): Count(
                "pk", filter=Q(finished_at__lte=F("started_at") + timedelta(seconds=bound))
            )
            for i, bound in enumerate(STEP_BUCKETS)
        }
        rows = (  # query 5: every bucket of every (workflow, step) in one pass
            RunStep.objects.filter(
                status__in=FINISHED_STEPS, started_at__isnull=False, finished_at__isnull=False
            )
            .values("run__kind", "name")
            .annotate(n=Count("pk"), total=Sum(duration), **buckets)
            .order_by("run__kind", "name")
        )
        family = HistogramMetricFamily(
            "budcluster_step_duration_seconds",
            "Wall time of finished workflow steps (start to end, retries and waits included), by workflow and "
            "step.",
            labels=["workflow", "step"],
        )
        for row in rows:
            cumulative = [(f"{bound:g}", row[_bucket_field(i)]) for i, bound in enumerate(STEP_BUCKETS)]
            cumulative.append(("+Inf", row["n"]))
            total = row["total"]
            seconds = total.total_seconds() if isinstance(total, timedelta) else float(total or 0)
            family.add_metric([row["run__kind"], row["name"]], cumulative, max(seconds, 0.0))
        yield family

    # --- broker and sweeps --------------------------------------------------------------------------------------

    def _queues(self) -> Iterator[Metric]:
        depths = queues.depths()
        up = GaugeMetricFamily(
            "budcluster_broker_up", "1 if the broker answered the queue-depth read, else 0."
        )
        up.add_metric([], 0 if depths is None else 1)
        yield up
        family = GaugeMetricFamily(
            "budcluster_queue_depth",
            "Messages waiting in the broker, by queue (celery: workflow steps, polls: checks of waiting steps).",
            labels=["queue"],
        )
        for queue, n in (depths or {}).items():
            family.add_metric([queue], n)
        yield family

    def _sweeps(self) -> Iterator[Metric]:
        timings = list(SweepTiming.objects.all())  # query 6
        summary = SummaryMetricFamily(
            "budcluster_health_sweep_duration_seconds",
            "Duration of the periodic health sweeps (clusters: API servers, deployments: replicas and endpoints).",
            labels=["sweep"],
        )
        last = GaugeMetricFamily(
            "budcluster_health_sweep_last_duration_seconds", "Duration of the latest sweep.", labels=["sweep"]
        )
        when = GaugeMetricFamily(
            "budcluster_health_sweep_last_timestamp_seconds",
            "Unix time the latest sweep ended (alert when it grows old: the beat or the workers stopped).",
            labels=["sweep"],
        )
        for timing in timings:
            summary.add_metric([timing.sweep], count_value=timing.count, sum_value=timing.sum_seconds)
            if timing.last_finished_at is not None:
                last.add_metric([timing.sweep], timing.last_seconds)
                when.add_metric([timing.sweep], timing.last_finished_at.timestamp())
        yield summary
        yield last
        yield when

    # --- webhooks -----------------------------------------------------------------------------------------------

    def _webhooks(self) -> Iterator[Metric]:
        from django.db.models import Count, Q

        from webhooks.models import Attempt, Delivery, DeliveryStatus

        by_status = dict.fromkeys(DeliveryStatus.values, 0)
        for status, n in Delivery.objects.values_list("status").annotate(n=Count("pk")).order_by():  # query 7
            by_status[status] = n
        deliveries = GaugeMetricFamily(
            "budcluster_webhook_deliveries",
            "Webhook deliveries by status (pending: waiting or retrying; failed: given up after the retry window).",
            labels=["status"],
        )
        for status, n in sorted(by_status.items()):
            deliveries.add_metric([status], n)
        yield deliveries
        counts = Attempt.objects.aggregate(  # query 8
            success=Count("pk", filter=Q(status_code__gte=200, status_code__lt=300)), total=Count("pk")
        )
        attempts = CounterMetricFamily(
            "budcluster_webhook_attempts",
            "Webhook POSTs by outcome (success: a 2xx answer; failure: another status, a timeout or a refusal).",
            labels=["outcome"],
        )
        attempts.add_metric(["success"], counts["success"])
        attempts.add_metric(["failure"], counts["total"] - counts["success"])
        yield attempts
