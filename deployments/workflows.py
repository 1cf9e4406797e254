"""Deployment workflows: deploy, update (scale / engine args / image), rollback, delete, benchmark.

Deploy::

    verify cluster → place (inventory read again) → namespace → secrets → transfer weights → wait for the
    transfer (progress from the ``<job>-progress`` ConfigMap; deadline scaled by the weights' size) → install the
    runtime (revision 1) → wait until ready (bounded; FailedScheduling / ImagePullBackOff / CrashLoopBackOff
    reasons verbatim) → verify the endpoint (``/v1/models`` + a completion or embedding) → benchmark (optional)
    → running.        cleanup on failure or cancel: uninstall every release, delete the namespace → failed.

Step bodies hold no rules of their own: they open the cluster gateway, call a named function of
``deployments.services`` (the actions' rules), ``deployments.health`` (reading the cluster) or
``deployments.benchmarking``, and translate its errors — a refusal or a chart error fails the step, an
unreachable cluster is retried with backoff for ``WORKFLOW_TRANSIENT_WINDOW`` (or, in a waiting step, waited
out until the step's deadline).

Every step is idempotent, so a worker killed anywhere leaves no duplicates when the step runs again: the
namespace, secrets and chart objects are server-side applied (create-or-update), the placement is computed
once and stored on the deployment, ``install_or_upgrade`` returns the current revision when the manifest is
unchanged, and a rollback re-run finds the revision it already created.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings

from clusters.services import gateway_for
from core.gateway import ClusterGateway, GatewayError, Unreachable
from core.helm import ChartError
from core.workflow import NotYet, Poll, Step, StepContext, StepFailed, TransientError, Workflow

from . import benchmarking, charts, health, services
from .choices import DeploymentStatus
from .models import Deployment


def _deployment(ctx: StepContext) -> Deployment:
    try:
        return Deployment.objects.select_related("cluster").get(pk=ctx.params["deployment_id"])
    except Deployment.DoesNotExist:
        raise StepFailed(f"deployment {ctx.params['deployment_id']} no longer exists") from None


def _gateway(deployment: Deployment, timeout: float = 30.0, budget: float | None = None) -> ClusterGateway:
    """The cluster's gateway, reusing this process's connection from step to step; a kubeconfig that cannot be
    used fails the step."""
    try:
        return gateway_for(deployment.cluster, timeout=timeout, budget=budget)
    except GatewayError as exc:
        raise StepFailed(str(exc)) from None


def _not_answering(exc: GatewayError) -> NotYet:
    """A check the cluster did not answer: not yet. When the check ran into its deadline (the cluster holds
    requests without answering), the next one comes only after three check deadlines (30 s by default) instead of
    the poll interval, so a hung cluster's checks hold a poll worker a quarter of the time at most; a quick
    refusal (connection refused, a 503) keeps the poll interval. The step's own deadline still ends the wait."""
    hung = isinstance(exc, Unreachable) and "did not answer" in str(exc)
    after = 3 * float(settings.WORKFLOW_POLL_CHECK_DEADLINE) if hung else None
    return NotYet(f"cluster not answering: {exc}", after=after)


def _check_gateway(deployment: Deployment) -> ClusterGateway:
    """The gateway for one check of a waiting step: all its calls together get ``WORKFLOW_POLL_CHECK_DEADLINE``
    seconds (a cluster that stops answering costs a poll worker that long, not 30 s per call); running out is
    "not yet", and the step's own deadline decides when waiting ends."""
    deadline = float(settings.WORKFLOW_POLL_CHECK_DEADLINE)
    return _gateway(deployment, timeout=deadline, budget=deadline)


def _gateway_failed(exc: GatewayError) -> Exception:
    """An unreachable cluster (refused or reset connection, timeout, 5xx) is retried for the transient window
    (``WORKFLOW_TRANSIENT_WINDOW``); anything else (401, 403, 422: credentials, rights, the object) fails at
    once, since waiting does not change the answer."""
    return TransientError(str(exc)) if isinstance(exc, Unreachable) else StepFailed(str(exc))


@contextmanager
def _cluster(deployment: Deployment, timeout: float = 30.0) -> Iterator[ClusterGateway]:
    """The gateway for a step that changes the cluster: refusals and chart errors fail the step, an unreachable
    cluster is retried."""
    gw = _gateway(deployment, timeout)
    try:
        with gw:
            yield gw
    except (services.DeploymentRefused, ChartError) as exc:
        raise StepFailed(str(exc)) from None
    except GatewayError as exc:
        raise _gateway_failed(exc) from None


@contextmanager
def _refusal_fails_step() -> Iterator[None]:
    try:
        yield
    except services.DeploymentRefused as exc:
        raise StepFailed(str(exc)) from None


def _poll_interval(ctx: StepContext) -> float:
    return float(settings.DEPLOY_POLL_INTERVAL)


# --- deploy steps --------------------------------------------------------------------------------------------


def verify_cluster(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _refusal_fails_step():
        services.refuse_if_deleting(deployment)
    with _cluster(deployment, timeout=10) as gw:
        version = gw.version().get("gitVersion", "")
    if not services.set_status(
        deployment, DeploymentStatus.DEPLOYING, "deploying", kind="deploy",
        only_from={DeploymentStatus.PENDING, DeploymentStatus.DEPLOYING},
    ):  # fmt: skip
        raise StepFailed(f"the deployment is {deployment.status}; not deploying it")
    return {"cluster": deployment.cluster.name, "version": version}


def place(ctx: StepContext) -> dict:
    """Read the inventory again and plan; the chosen placement is stored once (a re-run reuses it)."""
    deployment = _deployment(ctx)
    with _cluster(deployment, timeout=60) as gw:
        candidate = services.place_deployment(gw, deployment)["candidate"]
    return {
        "summary": candidate["summary"],
        "nodes": candidate["nodes"],
        "device_type": candidate["device_type"],
    }


def namespace(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        services.create_namespace(gw, deployment)
    return {"namespace": deployment.namespace}


def create_secrets(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        names = services.store_credentials(gw, deployment)
    return {"secrets": names}


def transfer(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        return services.start_transfer(gw, deployment)


def wait_transfer(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    started = ctx.outputs.get("transfer") or {}
    if started.get("skipped"):
        return {"skipped": started["skipped"]}
    job = started.get("job", charts.TRANSFER_JOB)
    try:
        with _check_gateway(deployment) as gw:
            state = health.transfer_state(
                gw, deployment.namespace, job, bytes_total=int(started.get("bytes_total") or 0)
            )
    except GatewayError as exc:
        return _not_answering(exc)
    if state.failed:
        raise StepFailed(state.message())
    if state.complete:
        return {"bytes": state.total or state.done, "job": job}
    return NotYet(state.message(), progress=state.progress)


def install(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        revision = services.install_runtime(
            gw,
            deployment,
            replicas=deployment.replicas,
            engine_args=list(deployment.engine_args),
            image=deployment.image,
            description="install",
        )
    return {"revision": revision.number, "objects": [f"{o['kind']}/{o['name']}" for o in revision.applied]}


def wait_ready(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    try:
        with _check_gateway(deployment) as gw:
            state = health.observe_rollout(gw, deployment)
    except GatewayError as exc:
        return _not_answering(exc)
    if state.done:
        return {"ready": state.ready, "workers": [w["name"] for w in state.workers]}
    return NotYet(state.message(), progress=state.progress)


def verify_endpoint(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    try:
        with _check_gateway(deployment) as gw:
            url = health.endpoint_url(gw, deployment)
    except GatewayError as exc:
        return _not_answering(exc)
    try:
        return health.confirm_endpoint(deployment, url)
    except health.NotServing as exc:
        return NotYet(str(exc))


def benchmark(ctx: StepContext) -> dict:
    """Optional: the benchmark given in the deploy request (``benchmarking.run_benchmark``)."""
    request = ctx.params.get("benchmark")
    if request is None:
        return {"skipped": "no benchmark requested"}
    return benchmarking.run_benchmark(_deployment(ctx), request, ctx=ctx)


def mark_running(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _refusal_fails_step():
        services.mark_running(deployment)
    return {"status": DeploymentStatus.RUNNING, "endpoint_url": deployment.endpoint_url}


# --- cleanup -----------------------------------------------------------------------------------------------------


def cleanup_resources(ctx: StepContext) -> dict:
    """Remove what the failed or cancelled deploy created. An unreachable cluster is retried for the transient
    window like any step; if it stays away longer, the deployment ends FAILED with its objects left, and the
    pending-cleanup beat (``finish_pending_cleanups``) removes them once the cluster is available again."""
    deployment = _deployment(ctx)
    if ctx.params.get("keep_on_failure"):
        return services.keep_for_inspection(deployment)
    try:
        with _gateway(deployment) as gw:
            return services.teardown(gw, deployment)
    except GatewayError as exc:
        if isinstance(exc, Unreachable):
            raise TransientError(f"could not remove the deployment's objects: {exc}") from None
        raise StepFailed(f"could not remove the deployment's objects: {exc}") from None


def mark_failed(ctx: StepContext) -> dict:
    ctx.run.refresh_from_db(fields=["error", "cancel_requested"])
    return services.deploy_failed(
        ctx.params["deployment_id"], error=ctx.run.error, cancelled=ctx.run.cancel_requested
    )


def _eta(name: str, default: float):
    return lambda params: float((params.get("eta") or {}).get(name, default))


READY_POLL = Poll(
    interval=_poll_interval,
    timeout=lambda ctx: float(ctx.params["timeouts"]["ready"]),
    what="the runtime pods to be ready",
)

DEPLOY = Workflow(
    kind="deployment.deploy",
    title="Deploy model",
    steps=[
        Step(
            "verify_cluster",
            "Verify the cluster",
            verify_cluster,
            eta=_eta("verify_cluster", 2),
        ),
        Step(
            "place",
            "Place the model (inventory read again)",
            place,
            eta=_eta("place", 3),
        ),
        Step("namespace", "Create the namespace", namespace, eta=_eta("namespace", 1)),
        Step(
            "secrets",
            "Store credentials as Secrets",
            create_secrets,
            eta=_eta("secrets", 1),
        ),
        Step("transfer", "Start the weights transfer", transfer, eta=2),
        Step(
            "wait_transfer",
            "Transfer the weights",
            wait_transfer,
            eta=_eta("transfer", 30),
            poll=Poll(
                interval=_poll_interval,
                timeout=lambda ctx: float(ctx.params["timeouts"]["transfer"]),
                what="the weights transfer",
            ),
        ),
        Step("install", "Install the runtime", install, eta=_eta("install", 3)),
        Step(
            "wait_ready",
            "Wait for the runtime to be ready",
            wait_ready,
            eta=_eta("wait_ready", 60),
            poll=READY_POLL,
        ),
        Step(
            "verify_endpoint",
            "Verify the endpoint",
            verify_endpoint,
            eta=_eta("verify_endpoint", 5),
            poll=Poll(
                interval=lambda ctx: float(ctx.params["timeouts"]["verify_interval"]),
                timeout=lambda ctx: float(ctx.params["timeouts"]["verify"]),
                what="the endpoint to list the model and answer",
            ),
        ),
        Step("benchmark", "Benchmark (optional)", benchmark, eta=_eta("benchmark", 0)),
        Step("mark_running", "Mark the deployment running", mark_running, eta=1),
    ],
    cleanup=[
        Step("cleanup_resources", "Remove what was created", cleanup_resources),
        Step("mark_failed", "Record why the deployment failed", mark_failed),
    ],
)


# --- update / rollback -------------------------------------------------------------------------------------------


def check_capacity(ctx: StepContext) -> dict:
    """Scaling up needs room for the extra replicas on the same kind of device (inventory read again)."""
    deployment = _deployment(ctx)
    services.begin_change(deployment, ctx.run.title, kind="update")
    extra = services.extra_replicas(deployment, ctx.params["changes"])
    if extra <= 0:
        return {"extra_replicas": 0}
    with _cluster(deployment, timeout=60) as gw:
        room = services.check_room(gw, deployment, extra)
    return {"extra_replicas": extra, "room": room}


def apply_update(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        revision = services.apply_changes(gw, deployment, ctx.params["changes"])
    return {"revision": revision.number}


def apply_rollback(ctx: StepContext) -> dict:
    """Re-apply a stored revision as a new one (helm-style). A re-run finds the revision it already made."""
    deployment = _deployment(ctx)
    services.begin_change(deployment, ctx.run.title, kind="rollback")
    number = int(ctx.params["revision"])
    with _cluster(deployment) as gw:
        revision = services.roll_back(gw, deployment, number, since=ctx.run.created_at)
    return {"revision": revision.number, "from_revision": number}


def mark_updated(ctx: StepContext) -> dict:
    services.finish_change(_deployment(ctx))
    return {"status": DeploymentStatus.RUNNING}


def update_failed(ctx: StepContext) -> dict:
    ctx.run.refresh_from_db(fields=["error"])
    return services.change_failed(ctx.params["deployment_id"], title=ctx.run.title, error=ctx.run.error)


UPDATE = Workflow(
    kind="deployment.update",
    title="Update deployment",
    steps=[
        Step("check_capacity", "Check room for more replicas", check_capacity, eta=3),
        Step("apply_update", "Roll out a new revision", apply_update, eta=3),
        Step("wait_ready", "Wait for the runtime to be ready", wait_ready, eta=30, poll=READY_POLL),
        Step("mark_running", "Mark the deployment running", mark_updated, eta=1),
    ],
    cleanup=[Step("update_failed", "Record why the update failed", update_failed)],
)

ROLLBACK = Workflow(
    kind="deployment.rollback",
    title="Roll back deployment",
    steps=[
        Step("apply_rollback", "Re-apply the stored revision", apply_rollback, eta=3),
        Step("wait_ready", "Wait for the runtime to be ready", wait_ready, eta=30, poll=READY_POLL),
        Step("mark_running", "Mark the deployment running", mark_updated, eta=1),
    ],
    cleanup=[Step("rollback_failed", "Record why the rollback failed", update_failed)],
)


# --- delete ------------------------------------------------------------------------------------------------------


def remove_objects(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with _cluster(deployment) as gw:
        return services.teardown(gw, deployment)


def wait_namespace_gone(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    try:
        with _check_gateway(deployment) as gw:
            left = health.namespace_left(gw, deployment.namespace)
    except GatewayError as exc:
        return _not_answering(exc)
    if left:
        return NotYet(f"namespace {deployment.namespace} is {left}")
    return {"namespace": deployment.namespace, "gone": True}


def mark_deleted(ctx: StepContext) -> dict:
    services.mark_deleted(_deployment(ctx))
    return {"status": DeploymentStatus.DELETED}


def delete_failed(ctx: StepContext) -> dict:
    ctx.run.refresh_from_db(fields=["error"])
    services.delete_failed(ctx.params["deployment_id"], error=ctx.run.error)
    return {}


DELETE = Workflow(
    kind="deployment.delete",
    title="Delete deployment",
    steps=[
        Step(
            "remove_objects",
            "Uninstall releases and delete the namespace",
            remove_objects,
            eta=3,
        ),
        Step(
            "wait_namespace_gone",
            "Wait until the namespace is gone",
            wait_namespace_gone,
            eta=5,
            poll=Poll(interval=_poll_interval, timeout=600.0, what="the namespace to be deleted"),
        ),
        Step("mark_deleted", "Mark the deployment deleted", mark_deleted, eta=1),
    ],
    cleanup=[Step("delete_failed", "Record why deletion failed", delete_failed)],
)


# --- benchmark ---------------------------------------------------------------------------------------------------

BENCHMARK = Workflow(
    kind="deployment.benchmark",
    title="Benchmark deployment",
    steps=[Step("benchmark", "Run the benchmark", benchmarking.benchmark_step, eta=30)],
    cleanup=[Step("record_outcome", "Record why the benchmark stopped", benchmarking.benchmark_stopped)],
)


# --- pending cleanups ---------------------------------------------------------------------------------------------
# A deploy whose cleanup could not reach its cluster for the whole transient window ends FAILED with its namespace,
# Secrets and PVC left on the cluster. The beat task ``deployments.finish_pending_cleanups`` (every minute by
# default, under Periodic tasks) starts a ``deployment.cleanup`` run for each such deployment once its cluster is
# available again (the health sweep says so): the same teardown, the deployment stays FAILED, an event says what was
# removed. A cleanup run that fails in turn is tried again ``DEPLOY_CLEANUP_RETRY_AFTER`` seconds after it ended.

CLEANUP_KIND = "deployment.cleanup"


def remove_leftovers(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    if deployment.status != DeploymentStatus.FAILED:
        return {"skipped": f"the deployment is {deployment.status}"}
    with _cluster(deployment) as gw:
        removed = services.teardown(gw, deployment)
    services.record_event(
        deployment,
        "cleanup",
        f"removed what the failed deploy left on the cluster: namespace {deployment.namespace}, "
        f"{removed['objects_deleted']} object(s) of {len(removed['releases'])} release(s)",
    )
    return removed


CLEANUP = Workflow(
    kind=CLEANUP_KIND,
    title="Remove a failed deployment's leftovers",
    steps=[Step("remove_leftovers", "Remove what the failed deploy left", remove_leftovers, eta=3)],
)


def pending_cleanups() -> list[Deployment]:
    """FAILED deployments (not kept for inspection) whose deploy run's cleanup step failed, on an available
    cluster, with no cleanup run under way, none succeeded, and none failed within the retry interval."""
    from django.db.models import Exists, OuterRef, Q
    from django.db.models.functions import Cast
    from django.utils import timezone

    from clusters.choices import ClusterStatus
    from core.choices import RunStatus, StepStatus
    from core.models import Run, RunStep

    subject = Cast(OuterRef("pk"), output_field=Run._meta.get_field("subject_id"))
    cleanup_failed = RunStep.objects.filter(
        run__kind=DEPLOY.kind, run__subject_id=subject, name="cleanup_resources", status=StepStatus.FAILED
    )
    retry_after = float(getattr(settings, "DEPLOY_CLEANUP_RETRY_AFTER", 600))
    settled = Run.objects.filter(kind=CLEANUP_KIND, subject_id=subject).filter(
        Q(status__in=[*RunStatus.active(), RunStatus.SUCCEEDED])
        | Q(finished_at__gt=timezone.now() - timedelta(seconds=retry_after))
    )
    return list(
        Deployment.objects.filter(
            status=DeploymentStatus.FAILED, keep_on_failure=False, cluster__status=ClusterStatus.AVAILABLE
        )
        .filter(Exists(cleanup_failed))
        .exclude(Exists(settled))
        .order_by("pk")[:100]
    )


def finish_pending_cleanups() -> list[int]:
    """Start a cleanup run for each pending cleanup (``pending_cleanups``); returns the deployments' ids."""
    started = []
    for deployment in pending_cleanups():
        CLEANUP.launch(
            subject=deployment,
            params={"deployment_id": deployment.pk},
            title=f"Remove leftovers of {deployment.name}",
        )
        started.append(deployment.pk)
    return started
