"""Deployment workflows: deploy, update (scale / engine args / image), rollback, delete.

Deploy::

    verify cluster → place (inventory read again) → namespace → secrets → transfer weights → wait for the
    transfer (progress from the ``<job>-progress`` ConfigMap; deadline scaled by the weights' size) → install the
    runtime (revision 1) → wait until ready (bounded; FailedScheduling / ImagePullBackOff / CrashLoopBackOff
    reasons verbatim) → verify the endpoint (``/v1/models`` + a completion or embedding) → benchmark (optional)
    → running.        cleanup on failure or cancel: uninstall every release, delete the namespace → failed.

Every step is idempotent, so a worker killed anywhere leaves no duplicates when the step runs again: the
namespace, secrets and chart objects are server-side applied (create-or-update), the placement is computed
once and stored on the deployment, ``install_or_upgrade`` returns the current revision when the manifest is
unchanged, and a rollback re-run finds the revision it already created.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from django.conf import settings
from django.db import transaction

from clusters.choices import ReleaseStatus
from clusters.models import Release, Revision
from core.gateway import GatewayError, Unreachable
from core.helm import ChartError
from core.workflow import NotYet, Poll, Step, StepContext, StepFailed, TransientError, Workflow

from . import placement as placement_engine
from . import services
from .choices import DeploymentStatus, ModelSource
from .models import Deployment, Worker


def _deployment(ctx: StepContext) -> Deployment:
    try:
        return Deployment.objects.select_related("cluster").get(pk=ctx.params["deployment_id"])
    except Deployment.DoesNotExist:
        raise StepFailed(f"deployment {ctx.params['deployment_id']} no longer exists") from None


def _gateway(deployment: Deployment, timeout: float = 30.0):
    try:
        return services._gateway(deployment.cluster, timeout=timeout)
    except GatewayError as exc:
        raise StepFailed(str(exc)) from None


def _gateway_failed(exc: GatewayError) -> Exception:
    """Unreachable clusters are worth a retry; anything else (forbidden, invalid) is not."""
    return TransientError(str(exc)) if isinstance(exc, Unreachable) else StepFailed(str(exc))


def _poll_interval(ctx: StepContext) -> float:
    return float(settings.DEPLOY_POLL_INTERVAL)


# --- deploy steps --------------------------------------------------------------------------------------------


def verify_cluster(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    if deployment.status == DeploymentStatus.DELETING:
        raise StepFailed("the deployment is being deleted")
    try:
        with _gateway(deployment, timeout=10) as gw:
            version = gw.version().get("gitVersion", "")
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    services.set_status(deployment, DeploymentStatus.DEPLOYING, "deploying", kind="deploy")
    return {"cluster": deployment.cluster.name, "version": version}


def place(ctx: StepContext) -> dict:
    """Read the inventory again and plan; the chosen placement is stored once (a re-run reuses it)."""
    from hardware.services import refresh_inventory

    deployment = _deployment(ctx)
    if not deployment.placement.get("candidate"):
        try:
            with _gateway(deployment, timeout=60) as gw:
                refresh_inventory(deployment.cluster, gw)
        except GatewayError as exc:
            raise _gateway_failed(exc) from None
        try:
            result = services.place(deployment.config, services.node_capacities(deployment.cluster))
        except placement_engine.PlacementError as exc:
            raise StepFailed(str(exc)) from None
        except ValueError as exc:
            raise StepFailed(f"invalid request: {exc}") from None
        record = services.placement_record(result)
        if deployment.config.get("served_model_name"):
            record["runtime"]["served_model_name"] = deployment.config["served_model_name"]
        Deployment.objects.filter(pk=deployment.pk).update(placement=record)
        deployment.placement = record
    candidate = deployment.placement["candidate"]
    return {
        "summary": candidate["summary"],
        "nodes": candidate["nodes"],
        "device_type": candidate["device_type"],
    }


def namespace(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    obj = services.namespace_object(deployment)
    try:
        with _gateway(deployment) as gw:
            gw.apply(obj)
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    return {"namespace": deployment.namespace}


def create_secrets(ctx: StepContext) -> dict:
    """Credentials from the request become Kubernetes Secrets, then leave the database.

    Only Secret names appear in outputs and values; the charts read the Secrets by ``existingSecret``.
    """
    deployment = _deployment(ctx)
    creds = deployment.credentials or {}
    wanted: dict[str, dict[str, str]] = {}
    if creds.get("hf_token"):
        wanted[services.HF_SECRET] = {"token": creds["hf_token"]}
    if creds.get("s3_access_key_id"):
        wanted[services.S3_SECRET] = {
            "AWS_ACCESS_KEY_ID": creds["s3_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds.get("s3_secret_access_key", ""),
        }
    labels = {services.DEPLOYMENT_LABEL: str(deployment.pk), "app.kubernetes.io/managed-by": "budcluster"}
    try:
        with _gateway(deployment) as gw:
            for name, data in wanted.items():
                gw.create_secret(deployment.namespace, name, data, labels=labels)
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    if deployment.credentials is not None:
        Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
    # After a re-run the credentials are already gone from the row: report what the config says exists.
    return {"secrets": sorted(wanted) or list(deployment.config.get("secret_names") or [])}


def transfer(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    if deployment.config.get("source") == ModelSource.NONE:
        return {"skipped": "source none: the engine downloads the model itself"}
    runtime = deployment.placement["runtime"]
    weights = deployment.placement["result"]["estimate"]["weights_bytes"]
    values = services.transfer_chart_values(
        deployment.config,
        runtime,
        weights,
        has_secret=bool(
            {services.HF_SECRET, services.S3_SECRET} & set(deployment.config.get("secret_names") or [])
        ),
    )
    revision = _release(
        deployment, services.TRANSFER_CHART, services.TRANSFER_RELEASE, values, description="model transfer"
    )
    return {"job": services.TRANSFER_JOB, "revision": revision.number, "bytes_total": weights}


def wait_transfer(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    started = ctx.outputs.get("transfer") or {}
    if started.get("skipped"):
        return {"skipped": started["skipped"]}
    job_name = started.get("job", services.TRANSFER_JOB)
    try:
        with _gateway(deployment) as gw:
            job = gw.get_or_none("batch/v1", "Job", job_name, deployment.namespace) or {}
            progress = gw.get_or_none("v1", "ConfigMap", f"{job_name}-progress", deployment.namespace) or {}
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    data = progress.get("data") or {}
    done = int(data.get("bytes_done") or 0)
    total = int(data.get("bytes_total") or started.get("bytes_total") or 0)
    conditions = {
        c.get("type"): c
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    if "Failed" in conditions or data.get("phase") == "Failed":
        cond = conditions.get("Failed") or {}
        raise StepFailed(
            f"the weights transfer failed: {cond.get('reason', 'Failed')}: {cond.get('message', '')} "
            f"({_gib(done)} of {_gib(total)} GiB copied; see the logs of Job {job_name})"
        )
    if "Complete" in conditions or data.get("phase") == "Succeeded":
        return {"bytes": total or done, "job": job_name}
    fraction = done / total if total else 0.0
    return NotYet(f"{_gib(done)} of {_gib(total)} GiB copied", progress=fraction)


def _gib(num: int) -> str:
    return f"{num / placement_engine.GIB:.1f}"


def _release(deployment: Deployment, chart: str, release: str, values: dict, description: str) -> Revision:
    """Render ``chart`` and apply it as ``release`` in the deployment's namespace (idempotent); chart errors fail
    the step, an unreachable cluster is retried."""
    from clusters.releases import install_or_upgrade

    try:
        with _gateway(deployment) as gw:
            return install_or_upgrade(
                gw, deployment.cluster, chart=chart, release=release, namespace=deployment.namespace,
                values=values, description=description,
            )  # fmt: skip
    except ChartError as exc:
        raise StepFailed(str(exc)) from None
    except GatewayError as exc:
        raise _gateway_failed(exc) from None


def _install(deployment: Deployment, *, replicas: int, engine_args: list[str], image: str, description: str):
    """Render and apply the runtime release with these settings; returns the revision (idempotent)."""
    values = services.runtime_chart_values(
        deployment_id=str(deployment.pk),
        config=deployment.config,
        runtime=deployment.placement["runtime"],
        replicas=replicas,
        engine_args=engine_args,
        image=image,
        has_hf_secret=services.HF_SECRET in (deployment.config.get("secret_names") or []),
        ingress_host=services.ingress_host(deployment.cluster, deployment.namespace)
        if (deployment.config.get("service_type") or settings.DEPLOY_SERVICE_TYPE) != "LoadBalancer"
        else "",
    )
    revision = _release(
        deployment, services.RUNTIME_CHART, services.runtime_release_name(deployment), values, description
    )
    if deployment.release_id != revision.release_id:
        Deployment.objects.filter(pk=deployment.pk).update(release_id=revision.release_id)
    return revision


def install(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    revision = _install(
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
        with _gateway(deployment) as gw:
            state = services.readiness(gw, deployment)
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    Deployment.objects.filter(pk=deployment.pk).update(ready_replicas=state.ready)
    if state.done:
        return {"ready": state.ready, "workers": [w["name"] for w in state.workers]}
    return NotYet(state.message(), progress=state.ready / state.desired if state.desired else 0.0)


def verify_endpoint(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    try:
        with _gateway(deployment) as gw:
            url = services.endpoint_url(gw, deployment)
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    if not url:
        return NotYet("the Service has no LoadBalancer address yet and the cluster has no ingress URL")
    try:
        answer = services.probe_endpoint(
            url,
            deployment.placement["runtime"]["served_model_name"],
            deployment.model_spec.get("kind", "generation"),
        )
    except GatewayError as exc:
        return NotYet(str(exc))
    Deployment.objects.filter(pk=deployment.pk).update(endpoint_url=url)
    return answer


def benchmark(ctx: StepContext) -> dict:
    """Optional: ``deployments.benchmarking.run_benchmark(deployment, settings)`` when requested and present."""
    request = ctx.params.get("benchmark")
    if request is None:
        return {"skipped": "no benchmark requested"}
    if importlib.util.find_spec("deployments.benchmarking") is None:
        return {"skipped": "benchmarking is not available in this installation"}
    module = importlib.import_module("deployments.benchmarking")
    result = module.run_benchmark(_deployment(ctx), request, ctx=ctx)
    return result if isinstance(result, dict) else {"result": result}


def mark_running(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    with transaction.atomic():
        current = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if current.status == DeploymentStatus.DELETING:
            raise StepFailed("the deployment is being deleted")
        services.set_status(current, DeploymentStatus.RUNNING, "", kind="deploy")
    return {"status": DeploymentStatus.RUNNING, "endpoint_url": deployment.endpoint_url}


# --- cleanup -----------------------------------------------------------------------------------------------------


def teardown(deployment: Deployment) -> dict:
    """Uninstall every release in the deployment's namespace (newest first), then delete the namespace."""
    from clusters.releases import uninstall

    releases = list(
        Release.objects.filter(cluster=deployment.cluster, namespace=deployment.namespace)
        .exclude(status=ReleaseStatus.UNINSTALLED)
        .order_by("-created_at")
    )
    deleted = 0
    with _gateway(deployment) as gw:
        for release in releases:
            deleted += uninstall(gw, release)
        namespace_deleted = gw.delete("v1", "Namespace", deployment.namespace)
    Worker.objects.filter(deployment=deployment).delete()
    Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
    return {
        "releases": [r.name for r in releases],
        "objects_deleted": deleted,
        "namespace_deleted": namespace_deleted,
    }


def cleanup_resources(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    if ctx.params.get("keep_on_failure"):
        Deployment.objects.filter(pk=deployment.pk).update(credentials=None)
        return {"kept": f"keep_on_failure: namespace {deployment.namespace} left for inspection"}
    try:
        return teardown(deployment)
    except GatewayError as exc:
        raise StepFailed(f"could not remove the deployment's objects: {exc}") from None


def mark_failed(ctx: StepContext) -> dict:
    deployment = Deployment.objects.filter(pk=ctx.params["deployment_id"]).first()
    if deployment is None or deployment.status in (DeploymentStatus.DELETING, DeploymentStatus.DELETED):
        return {"skipped": "deployment deleted"}
    ctx.run.refresh_from_db(fields=["error", "cancel_requested"])
    reason = ctx.run.error or "the deploy run did not finish"
    if ctx.run.cancel_requested and "cancel" not in reason:
        reason = f"cancelled: {reason}"
    services.set_status(deployment, DeploymentStatus.FAILED, reason, kind="deploy")
    return {"status": DeploymentStatus.FAILED}


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
            retries=2,
            retry_delay=3,
        ),
        Step(
            "place",
            "Place the model (inventory read again)",
            place,
            eta=_eta("place", 3),
            retries=2,
            retry_delay=3,
        ),
        Step(
            "namespace", "Create the namespace", namespace, eta=_eta("namespace", 1), retries=2, retry_delay=3
        ),
        Step(
            "secrets",
            "Store credentials as Secrets",
            create_secrets,
            eta=_eta("secrets", 1),
            retries=2,
            retry_delay=3,
        ),
        Step("transfer", "Start the weights transfer", transfer, eta=2, retries=2, retry_delay=3),
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
        Step("install", "Install the runtime", install, eta=_eta("install", 3), retries=2, retry_delay=3),
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
        Step("cleanup_resources", "Remove what was created", cleanup_resources, retries=2, retry_delay=3),
        Step("mark_failed", "Record why the deployment failed", mark_failed),
    ],
)


# --- update / rollback -------------------------------------------------------------------------------------------


def check_capacity(ctx: StepContext) -> dict:
    """Scaling up needs room for the extra replicas on the same kind of device (inventory read again)."""
    from hardware.services import refresh_inventory

    deployment = _deployment(ctx)
    services.set_status(deployment, DeploymentStatus.DEPLOYING, ctx.run.title, kind="update")
    extra = int(ctx.params["changes"].get("replicas", deployment.replicas)) - deployment.replicas
    if extra <= 0:
        return {"extra_replicas": 0}
    try:
        with _gateway(deployment, timeout=60) as gw:
            refresh_inventory(deployment.cluster, gw)
    except GatewayError as exc:
        raise _gateway_failed(exc) from None
    try:
        result = services.place(
            deployment.config,
            services.node_capacities(deployment.cluster),
            replicas=extra,
            device_type=deployment.placement["candidate"]["device_type"],
        )
    except placement_engine.PlacementError as exc:
        raise StepFailed(f"no room for {extra} more replica(s): {exc}") from None
    return {"extra_replicas": extra, "room": result.best.describe()}


def apply_update(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    changes = ctx.params["changes"]
    replicas = int(changes.get("replicas", deployment.replicas))
    engine_args = list(changes.get("engine_args", deployment.engine_args))
    image = changes.get("image", deployment.image)
    what = ", ".join(f"{k}={v}" for k, v in changes.items())
    revision = _install(
        deployment,
        replicas=replicas,
        engine_args=engine_args,
        image=image,
        description=f"update: {what}"[:200],
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        replicas=replicas, engine_args=engine_args, image=image
    )
    return {"revision": revision.number}


def _generated_args(runtime: dict) -> int:
    return len(
        services.runtime_chart_values(
            deployment_id="",
            config={},
            runtime=runtime,
            replicas=1,
            engine_args=[],
            image="",
            has_hf_secret=False,
        )["engine"]["extraArgs"]
    )


def apply_rollback(ctx: StepContext) -> dict:
    """Re-apply a stored revision as a new one (helm-style). A re-run finds the revision it already made."""
    from clusters.releases import rollback

    deployment = _deployment(ctx)
    services.set_status(deployment, DeploymentStatus.DEPLOYING, ctx.run.title, kind="rollback")
    number = int(ctx.params["revision"])
    release = deployment.release
    if release is None:
        raise StepFailed("the deployment has no runtime release")
    target = Revision.objects.get(release=release, number=number)
    current = release.revisions.filter(number=release.current_revision).first()
    if (
        current is not None
        and current.created_at >= ctx.run.created_at
        and current.description == f"rollback to {number}"
    ):
        revision = current  # this run already created it before its worker died
    else:
        try:
            with _gateway(deployment) as gw:
                revision = rollback(gw, release, number)
        except ChartError as exc:
            raise StepFailed(str(exc)) from None
        except GatewayError as exc:
            raise _gateway_failed(exc) from None
    values = target.values
    image = values.get("image") or {}
    extra = list((values.get("engine") or {}).get("extraArgs") or [])
    Deployment.objects.filter(pk=deployment.pk).update(
        replicas=int(values.get("replicas", deployment.replicas)),
        engine_args=extra[_generated_args(deployment.placement["runtime"]) :],
        image=f"{image['repository']}:{image['tag']}" if image.get("repository") else "",
    )
    return {"revision": revision.number, "from_revision": number}


def mark_updated(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    services.set_status(
        deployment, DeploymentStatus.RUNNING, "", kind="update", ready_replicas=deployment.replicas
    )
    return {"status": DeploymentStatus.RUNNING}


def update_failed(ctx: StepContext) -> dict:
    deployment = Deployment.objects.filter(pk=ctx.params["deployment_id"]).first()
    if deployment is None or deployment.status in (DeploymentStatus.DELETING, DeploymentStatus.DELETED):
        return {"skipped": "deployment deleted"}
    ctx.run.refresh_from_db(fields=["error"])
    # The previous revision may still serve; the health beat settles RUNNING / DEGRADED / FAILED later.
    services.set_status(
        deployment, DeploymentStatus.DEGRADED, f"{ctx.run.title} failed: {ctx.run.error}", kind="update"
    )
    return {"status": DeploymentStatus.DEGRADED}


UPDATE = Workflow(
    kind="deployment.update",
    title="Update deployment",
    steps=[
        Step(
            "check_capacity", "Check room for more replicas", check_capacity, eta=3, retries=2, retry_delay=3
        ),
        Step("apply_update", "Roll out a new revision", apply_update, eta=3, retries=2, retry_delay=3),
        Step("wait_ready", "Wait for the runtime to be ready", wait_ready, eta=30, poll=READY_POLL),
        Step("mark_running", "Mark the deployment running", mark_updated, eta=1),
    ],
    cleanup=[Step("update_failed", "Record why the update failed", update_failed)],
)

ROLLBACK = Workflow(
    kind="deployment.rollback",
    title="Roll back deployment",
    steps=[
        Step(
            "apply_rollback", "Re-apply the stored revision", apply_rollback, eta=3, retries=2, retry_delay=3
        ),
        Step("wait_ready", "Wait for the runtime to be ready", wait_ready, eta=30, poll=READY_POLL),
        Step("mark_running", "Mark the deployment running", mark_updated, eta=1),
    ],
    cleanup=[Step("rollback_failed", "Record why the rollback failed", update_failed)],
)


# --- delete ------------------------------------------------------------------------------------------------------


def remove_objects(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    try:
        return teardown(deployment)
    except GatewayError as exc:
        raise _gateway_failed(exc) from None


def wait_namespace_gone(ctx: StepContext) -> Any:
    deployment = _deployment(ctx)
    try:
        with _gateway(deployment) as gw:
            ns = gw.get_or_none("v1", "Namespace", deployment.namespace)
    except GatewayError as exc:
        return NotYet(f"cluster not answering: {exc}")
    if ns is not None:
        phase = (ns.get("status") or {}).get("phase", "")
        return NotYet(f"namespace {deployment.namespace} is {phase or 'still there'}")
    return {"namespace": deployment.namespace, "gone": True}


def mark_deleted(ctx: StepContext) -> dict:
    deployment = _deployment(ctx)
    Worker.objects.filter(deployment=deployment).delete()
    services.set_status(
        deployment, DeploymentStatus.DELETED, "", kind="delete", ready_replicas=0, endpoint_url=""
    )
    return {"status": DeploymentStatus.DELETED}


def delete_failed(ctx: StepContext) -> dict:
    deployment = Deployment.objects.filter(pk=ctx.params["deployment_id"]).first()
    if deployment is not None:
        ctx.run.refresh_from_db(fields=["error"])
        services.set_status(
            deployment, DeploymentStatus.FAILED, f"deletion failed: {ctx.run.error}", kind="delete"
        )
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
            retries=3,
            retry_delay=3,
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


def _benchmark_step(ctx: StepContext) -> dict:
    from .benchmarking import benchmark_step

    return benchmark_step(ctx)


def _benchmark_stopped(ctx: StepContext) -> dict:
    from .benchmarking import benchmark_stopped

    return benchmark_stopped(ctx)


BENCHMARK = Workflow(
    kind="deployment.benchmark",
    title="Benchmark deployment",
    steps=[Step("benchmark", "Run the benchmark", _benchmark_step, eta=30)],
    cleanup=[Step("record_outcome", "Record why the benchmark stopped", _benchmark_stopped)],
)
