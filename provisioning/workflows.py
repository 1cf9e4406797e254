"""Provisioning workflows and the steps this app adds to the cluster workflows.

``cluster.provision`` (one run per attempt)::

    check_credentials → init → plan → approve (waits for POST /runs/{id}/approve unless auto_approve)
      → apply (per-resource progress and events) → outputs (the non-sensitive ones stored)
      → credential (the cluster's kubeconfig, made outside Terraform → clusters' registration run)
      → wait_registration                       cleanup on failure/cancel: record_failure

No credential of the cluster passes through Terraform's state (plain text whatever the backend). The cloud
modules return only where the cluster is; the ``credential`` step mints a service-account token with a
short-lived token of the cloud identity and builds the kubeconfig (``provisioning.cloud_auth``). A module that
is handed the cluster's token as a variable (the local stand-in) returns a kubeconfig without it, and the
``outputs`` step adds the token and registers that kubeconfig; ``credential`` then has nothing to do. Either
way the kubeconfig is only ever stored encrypted, by the clusters app.

Every Terraform step builds its own runner (a fresh private work directory on whichever worker runs it)
and runs ``init`` first: the state lives in the backend, the saved plan in the database (encrypted), so no
step depends on files another worker left behind. Cancel reaches Terraform through the runner's
``should_cancel`` hook (SIGINT, then a bounded wait for a clean exit, which releases the state lock).

``provisioning.services`` starts the run by its kind (``core.workflow.get_workflow("cluster.provision")``), so
the services do not import this module; this module imports them.

Steps contributed to the cluster registration and deletion workflows (composed elsewhere, above both apps, from
the lists below; this module knows nothing of those workflows):

* ``SETUP_STEPS``: ``playbooks/setup_cluster.yml`` during registration, after verification;
* ``TEARDOWN_STEPS``: ``playbooks/teardown_cluster.yml`` during deletion (an unreachable cluster is
  tolerated when the deletion is forced);
* ``DESTROY_STEPS``: stop a provisioning run still going, then ``terraform destroy`` and drop the state —
  a no-op for clusters that were not provisioned.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import yaml
from django.conf import settings
from django.utils import timezone

from clusters.choices import ClusterStatus
from clusters.services import (
    RegistrationRefused,
    gateway_for,
    record_event,
    replace_kubeconfig,
    set_status,
    step_cluster,
)
from core.choices import RunStatus
from core.gateway import GatewayError
from core.models import Run, RunEvent, RunStep
from core.workflow import (
    Cancelled,
    NotYet,
    Poll,
    Step,
    StepContext,
    StepFailed,
    Workflow,
    request_cancel,
)

from . import cloud_auth
from .ansible import PlaybookError, run_playbook
from .choices import ProvisioningStatus
from .models import Provisioning
from .services import (
    PROVISION_KIND,
    ProvisioningRefused,
    check_credential,
    drop_state,
    runner_for,
    saved_plan,
    set_provisioning_status,
    store_plan,
)
from .terraform import TerraformCancelled, TerraformError

LOG_TAIL = 200


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _provisioning(ctx: StepContext) -> Provisioning:
    try:
        return Provisioning.objects.select_related("cluster", "credential").get(
            pk=ctx.params["provisioning_id"]
        )
    except Provisioning.DoesNotExist:
        raise StepFailed(f"provisioning {ctx.params['provisioning_id']} no longer exists") from None


def _cancel_requested(run_id: Any) -> bool:
    return Run.objects.filter(pk=run_id, cancel_requested=True).exists()


class _TerraformSink:
    """Collects what a Terraform command reports: redacted log lines (tail kept), resource events stored as
    RunEvents, the per-resource progress map written to the step's output while the command runs."""

    def __init__(self, ctx: StepContext, planned: int = 0) -> None:
        self.ctx = ctx
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.resources: dict[str, dict[str, Any]] = {}
        self.planned = planned
        self.done = 0
        self._last_write = 0.0

    def on_log(self, line: str) -> None:
        if line.strip():
            self.log.append(line)

    def on_event(self, event: Any) -> None:
        entry = self.resources.setdefault(event.address, {"action": event.action})
        entry.update(status=event.status, elapsed=event.elapsed)
        if event.status in ("complete", "errored"):
            self.done += 1
        if event.status != "in_progress":
            RunEvent.objects.create(
                run_id=self.ctx.run.pk,
                step=self.ctx.step.name,
                status=event.status,
                message=event.message or f"{event.address}: {event.status}",
                data={
                    "source": "terraform",
                    "address": event.address,
                    "action": event.action,
                    "status": event.status,
                    "elapsed": event.elapsed,
                },
            )
        now = time.monotonic()
        if now - self._last_write >= 1.0 or event.status in ("complete", "errored"):
            self._last_write = now
            RunStep.objects.filter(pk=self.ctx.step.pk).update(output={"resources": self.resources})
            if self.planned:
                self.ctx.progress(
                    min(1.0, self.done / self.planned), f"{self.done}/{self.planned} resources", force=True
                )

    def should_cancel(self) -> bool:
        return _cancel_requested(self.ctx.run.pk)

    def tail(self, count: int = 50) -> list[str]:
        return list(self.log)[-count:]


def _terraform(ctx: StepContext, call, *, what: str) -> Any:
    """Run ``call(runner, sink)`` with a fresh runner; map the runner's errors onto the engine's."""
    provisioning = _provisioning(ctx)
    sink = _TerraformSink(ctx)
    try:
        with runner_for(provisioning) as tf:
            tf.init(on_log=sink.on_log)
            return call(provisioning, tf, sink)
    except TerraformCancelled:
        raise Cancelled(f"terraform {what} interrupted") from None
    except TerraformError as exc:
        raise StepFailed(str(exc)) from None


# --- cluster.provision ----------------------------------------------------------------------------------------


def check_credentials(ctx: StepContext) -> dict:
    """The credential is still complete and for the provider (it may have been edited since the request)."""
    provisioning = _provisioning(ctx)
    credential = provisioning.credential
    try:
        check_credential(credential, provisioning.provider)
    except ProvisioningRefused as exc:
        raise StepFailed(str(exc)) from None
    set_provisioning_status(provisioning.pk, ProvisioningStatus.PLANNING)
    return {
        "credential": credential.name,
        "provider": provisioning.provider,
        "module": provisioning.module,
        "override": bool(_setting("PROVISIONING_MODULE_OVERRIDE", "")),
        "backend": provisioning.backend,
        "state": provisioning.state_name,
    }


def init(ctx: StepContext) -> dict:
    return _terraform(ctx, lambda p, tf, sink: {"log": sink.tail()}, what="init")


def plan(ctx: StepContext) -> dict:
    def body(provisioning: Provisioning, tf: Any, sink: _TerraformSink) -> dict:
        summary = tf.plan(on_log=sink.on_log, should_cancel=sink.should_cancel)
        data = summary.as_dict()
        store_plan(provisioning, tf.plan_bytes(), data)
        ctx.event(
            f"plan: {summary.add} to add, {summary.change} to change, {summary.destroy} to destroy",
            source="terraform",
            **{k: data[k] for k in ("add", "change", "destroy")},
        )
        next_status = (
            ProvisioningStatus.APPLYING if provisioning.auto_approve else ProvisioningStatus.AWAITING_APPROVAL
        )
        set_provisioning_status(provisioning.pk, next_status)
        return {"summary": data, "log": sink.tail()}

    return _terraform(ctx, body, what="plan")


def await_approval(ctx: StepContext) -> Any:
    provisioning = _provisioning(ctx)
    if provisioning.auto_approve:
        return {"approved": "auto"}
    if provisioning.approved_at is not None:
        return {
            "approved_by": getattr(provisioning.approved_by, "username", ""),
            "approved_at": provisioning.approved_at.isoformat(),
        }
    summary = provisioning.plan_summary or {}
    return NotYet(
        f"plan ({summary.get('add', 0)} to add, {summary.get('change', 0)} to change, "
        f"{summary.get('destroy', 0)} to destroy) waits for POST /runs/{ctx.run.pk}/approve"
    )


def apply(ctx: StepContext) -> dict:
    def body(provisioning: Provisioning, tf: Any, sink: _TerraformSink) -> dict:
        planned = (
            int((provisioning.plan_summary or {}).get("add", 0))
            + int((provisioning.plan_summary or {}).get("change", 0))
            + int((provisioning.plan_summary or {}).get("destroy", 0))
        )
        sink.planned = planned
        Provisioning.objects.filter(pk=provisioning.pk, applied_at__isnull=True).update(
            applied_at=timezone.now()
        )
        set_provisioning_status(provisioning.pk, ProvisioningStatus.APPLYING)
        # A re-run of this step (worker died mid-apply) finds the saved plan stale: the state moved on.
        # The approval covered this configuration, so plan-and-apply it again.
        plan_bytes = saved_plan(provisioning) if ctx.step.attempt <= 1 else None
        result = tf.apply(
            plan_bytes,
            on_event=sink.on_event,
            on_log=sink.on_log,
            should_cancel=sink.should_cancel,
        )
        Provisioning.objects.filter(pk=provisioning.pk).update(plan=None)
        return {
            "resources": sink.resources,
            "add": result.add,
            "change": result.change,
            "destroy": result.destroy,
            "log": sink.tail(),
        }

    return _terraform(ctx, body, what="apply")


def _registration_started(provisioning: Provisioning) -> bool:
    return bool(
        provisioning.registration_run_id and Run.objects.filter(pk=provisioning.registration_run_id).exists()
    )


def _register(ctx: StepContext, provisioning: Provisioning, document: str) -> Run:
    try:
        run = replace_kubeconfig(provisioning.cluster, document.encode(), user=ctx.run.created_by)
    except RegistrationRefused as exc:
        raise StepFailed(f"the provisioned cluster's kubeconfig was refused: {exc}") from None
    set_provisioning_status(provisioning.pk, ProvisioningStatus.REGISTERING, registration_run=run)
    return run


def outputs(ctx: StepContext) -> dict:
    """Read the outputs and keep the non-sensitive ones. A module's (sensitive) kubeconfig output goes straight
    into the cluster's registration; without one, the ``credential`` step makes the kubeconfig."""

    def body(provisioning: Provisioning, tf: Any, sink: _TerraformSink) -> dict:
        values = tf.output()
        public = {name: out.value for name, out in values.items() if not out.sensitive}
        Provisioning.objects.filter(pk=provisioning.pk).update(outputs=public)
        if _registration_started(provisioning):
            return {"outputs": public, "registration_run": str(provisioning.registration_run_id)}
        kubeconfig = values.get("kubeconfig")
        if kubeconfig is None or not kubeconfig.value:
            return {"outputs": public, "kubeconfig": "minted by the credential step"}
        document = _with_credential(provisioning, str(kubeconfig.value))
        run = _register(ctx, provisioning, document)
        return {"outputs": public, "registration_run": str(run.pk)}

    return _terraform(ctx, body, what="output")


def credential(ctx: StepContext) -> Any:
    """Mint the cluster's long-lived credential outside Terraform and register its kubeconfig (cloud modules).

    One check per call (see ``provisioning.cloud_auth``): until the cloud identity is accepted by the new API
    server and the token controller has filled the token Secret, the step waits (``NotYet``), up to
    ``PROVISIONING_CREDENTIAL_TIMEOUT``. A re-run (a redelivered message, a worker that died here) applies the
    same objects and reuses the same Secret; once the registration run exists it does nothing."""
    provisioning = _provisioning(ctx)
    if _registration_started(provisioning):
        return {"registration_run": str(provisioning.registration_run_id), "minted": False}
    set_provisioning_status(provisioning.pk, ProvisioningStatus.REGISTERING)
    try:
        minted = cloud_auth.mint_for(provisioning)
    except cloud_auth.NotReady as exc:
        return NotYet(str(exc))
    except cloud_auth.CredentialRefused as exc:
        raise StepFailed(f"cannot make the cluster's credential: {exc}") from None
    run = _register(ctx, provisioning, minted.kubeconfig)
    return {**minted.summary(), "minted": True, "registration_run": str(run.pk)}


# User fields that carry a credential in a kubeconfig (exec and auth-provider are refused by the guard).
_CREDENTIAL_FIELDS = ("token", "client-key-data", "password")


def _with_credential(provisioning: Provisioning, document: str) -> str:
    """The module's kubeconfig with its user's credential, added here when the module left it out.

    Terraform keeps every output in its state in plain text (``sensitive`` only hides it from the UI), so a
    module that is given the cluster's token (the local stand-in: its sensitive ``token`` variable, which
    Terraform never writes into the state) returns the kubeconfig without it; the token is added from the
    provisioning's encrypted secret variables and the result only ever stored encrypted.
    """
    try:
        parsed = yaml.safe_load(document)
        users = parsed["users"]
    except (yaml.YAMLError, TypeError, KeyError):
        return document  # the kubeconfig guard refuses it with its own message
    token = str((provisioning.secret_variables or {}).get("token") or "")
    missing = [u for u in users if isinstance(u, dict) and not _has_credential(u.get("user"))]
    if not missing:
        return document
    if not token:
        raise StepFailed(
            f"module {provisioning.module} returned a kubeconfig without a credential and no token variable"
        )
    for entry in missing:
        entry["user"] = {**(entry.get("user") or {}), "token": token}
    return yaml.safe_dump(parsed, sort_keys=False)


def _has_credential(user: Any) -> bool:
    return isinstance(user, dict) and any(user.get(field) for field in _CREDENTIAL_FIELDS)


def wait_registration(ctx: StepContext) -> Any:
    provisioning = _provisioning(ctx)
    run = Run.objects.filter(pk=provisioning.registration_run_id).first()
    if run is None:
        raise StepFailed("the registration run disappeared")
    if run.status == RunStatus.SUCCEEDED:
        set_provisioning_status(provisioning.pk, ProvisioningStatus.PROVISIONED)
        return {"registration_run": str(run.pk), "status": run.status}
    if run.status in RunStatus.terminal():
        raise StepFailed(f"registration of the new cluster {run.status}: {run.error}")
    step = run.steps.filter(status__in=["running", "waiting"]).order_by("order").first()
    doing = f" ({step.title})" if step else ""
    return NotYet(f"registration {run.progress:.0f}%{doing}", progress=run.progress / 100.0)


def record_failure(ctx: StepContext) -> dict:
    """Cleanup: record why, stop a registration still running; resources stay until the cluster is deleted."""
    provisioning = (
        Provisioning.objects.filter(pk=ctx.params["provisioning_id"]).select_related("cluster").first()
    )
    if provisioning is None:
        return {"skipped": "provisioning gone"}
    ctx.run.refresh_from_db(fields=["cancel_requested", "error"])
    cancelled = ctx.run.cancel_requested
    status = ProvisioningStatus.CANCELLED if cancelled else ProvisioningStatus.FAILED
    reason = ctx.run.error or ("cancelled" if cancelled else "provisioning did not finish")
    set_provisioning_status(provisioning.pk, status, reason)
    registration = Run.objects.filter(pk=provisioning.registration_run_id).first()
    if registration is not None and registration.is_active:
        request_cancel(registration, reason="provisioning cancelled")
    cluster = provisioning.cluster
    cluster.refresh_from_db()
    provisioning.refresh_from_db(fields=["applied_at"])
    hint = "; delete the cluster to destroy what was created" if provisioning.applied_at else ""
    if cluster.status in (ClusterStatus.PROVISIONING, ClusterStatus.REGISTERING):
        set_status(
            cluster, ClusterStatus.ERROR, f"provisioning {status}: {reason}{hint}", kind="provisioning"
        )
    return {"status": status}


def _poll_interval(ctx: StepContext) -> float:
    return float(_setting("PROVISIONING_POLL_INTERVAL", 2.0))


PROVISION_STEPS = [
    Step("check_credentials", "Check cloud credentials", check_credentials, eta=1),
    Step("init", "Initialise Terraform", init, eta=10),
    Step("plan", "Plan", plan, eta=30),
    Step(
        "approve",
        "Wait for approval",
        await_approval,
        eta=1,
        poll=Poll(
            interval=lambda ctx: float(_setting("PROVISIONING_APPROVAL_POLL_INTERVAL", 10.0)),
            timeout=lambda ctx: float(_setting("PROVISIONING_APPROVAL_TIMEOUT", 7 * 24 * 3600.0)),
            what="approval of the plan (POST /runs/{id}/approve)",
        ),
    ),
    Step("apply", "Apply", apply, eta=900),
    Step("outputs", "Read outputs", outputs, eta=10),
    Step(
        "credential",
        "Make the cluster's credential and register the cluster",
        credential,
        eta=10,
        poll=Poll(
            interval=lambda ctx: float(_setting("PROVISIONING_CREDENTIAL_POLL_INTERVAL", 5.0)),
            timeout=lambda ctx: float(_setting("PROVISIONING_CREDENTIAL_TIMEOUT", 900.0)),
            what="the cluster's credential (the cloud identity accepted, the token Secret filled)",
        ),
    ),
    Step(
        "wait_registration",
        "Wait for the cluster's registration",
        wait_registration,
        eta=60,
        poll=Poll(
            interval=_poll_interval,
            timeout=lambda ctx: float(_setting("PROVISIONING_REGISTRATION_TIMEOUT", 1800.0)),
            what="the registration run of the new cluster",
        ),
    ),
]

PROVISION = Workflow(
    kind=PROVISION_KIND,
    title="Provision cluster",
    steps=PROVISION_STEPS,
    cleanup=[Step("record_failure", "Record why provisioning stopped", record_failure)],
)


# --- steps contributed to cluster registration and deletion ------------------------------------------------------


def _task_sink(ctx: StepContext, playbook: str):
    """Store each Ansible task result as a RunEvent (AWX's one event row per task), already redacted."""

    def store(event: Any) -> None:
        detail = f" - {event.message}" if event.message and event.status in ("failed", "unreachable") else ""
        RunEvent.objects.create(
            run_id=ctx.run.pk,
            step=ctx.step.name,
            status=event.status,
            message=f"{event.task}: {event.status}{detail}",
            data={"source": "ansible", "playbook": playbook, **event.as_dict()},
        )

    return store


def _playbook(ctx: StepContext, cluster: Any, playbook: str, extravars: dict) -> Any:
    try:
        return run_playbook(
            playbook,
            kubeconfig=cluster.kubeconfig,
            extravars=extravars,
            on_event=_task_sink(ctx, playbook),
            should_cancel=lambda: _cancel_requested(ctx.run.pk),
            timeout=float(_setting("PLAYBOOK_TIMEOUT", 600.0)),
        )
    except PlaybookError as exc:
        raise StepFailed(str(exc)) from None


def _setup_enabled() -> bool:
    return bool(_setting("CLUSTER_SETUP_PLAYBOOKS", True))


def setup_cluster(ctx: StepContext) -> dict:
    """Namespaces, service account, RBAC (and the SCC on OpenShift) through setup_cluster.yml."""
    if not _setup_enabled():
        return {"skipped": "CLUSTER_SETUP_PLAYBOOKS is off"}
    cluster = step_cluster(ctx)
    platform = (ctx.outputs.get("identify_platform") or {}).get("platform")
    result = _playbook(ctx, cluster, "setup_cluster.yml", {"platform": platform} if platform else {})
    if result.status == "canceled":
        raise Cancelled("setup playbook interrupted")
    if not result.ok:
        raise StepFailed(result.summary())
    return result.as_dict()


def teardown_cluster(ctx: StepContext) -> dict:
    """Remove what setup_cluster.yml created; an unreachable cluster is skipped when the deletion is forced."""
    if not _setup_enabled():
        return {"skipped": "CLUSTER_SETUP_PLAYBOOKS is off"}
    cluster = step_cluster(ctx)
    if not cluster.kubeconfig:
        return {"skipped": "the cluster has no kubeconfig (never registered)"}
    force = bool(ctx.params.get("force"))
    # A quick probe first: the Kubernetes client behind the playbook retries an unreachable server for
    # minutes, and a forced deletion should not wait for that.
    try:
        with gateway_for(cluster, timeout=5.0, connect_timeout=3.0) as gw:
            gw.version()
    except GatewayError as exc:
        if force:
            record_event(cluster, "deletion", f"cluster unreachable, teardown playbook skipped: {exc}")
            return {"skipped": str(exc)}
        raise StepFailed(f"{exc}; retry, or delete with force=true to drop the record anyway") from None
    result = _playbook(ctx, cluster, "teardown_cluster.yml", {"platform": cluster.platform})
    if result.status == "canceled":
        raise Cancelled("teardown playbook interrupted")
    if not result.ok:
        if force and result.unreachable:
            record_event(
                cluster, "deletion", f"teardown playbook could not reach the cluster: {result.summary()}"
            )
            return {"skipped": result.summary()}
        raise StepFailed(result.summary())
    return result.as_dict()


def stop_provisioning(ctx: StepContext) -> Any:
    """A provisioning run still going is cancelled (its Terraform is interrupted) and waited for."""
    provisioning = Provisioning.objects.filter(cluster_id=ctx.params["cluster_id"]).first()
    if provisioning is None or provisioning.run_id is None:
        return {"skipped": "not provisioned"}
    run = Run.objects.filter(pk=provisioning.run_id).first()
    if run is None or run.status in RunStatus.terminal():
        return {"provisioning_run": str(provisioning.run_id) if run else None}
    if not run.cancel_requested:
        request_cancel(run, reason="the cluster is being deleted")
    return NotYet(f"waiting for provisioning run {run.pk} to stop")


def destroy(ctx: StepContext) -> dict:
    """``terraform destroy`` of a provisioned cluster, then drop its (empty) state."""
    provisioning = (
        Provisioning.objects.filter(cluster_id=ctx.params["cluster_id"]).select_related("credential").first()
    )
    if provisioning is None:
        return {"skipped": "not provisioned"}
    if not provisioning.needs_destroy:
        drop_state(provisioning)  # init may have created the schema; nothing was applied
        set_provisioning_status(provisioning.pk, ProvisioningStatus.DESTROYED, destroyed_at=timezone.now())
        return {"skipped": "nothing was applied"}
    set_provisioning_status(provisioning.pk, ProvisioningStatus.DESTROYING)
    sink = _TerraformSink(ctx)
    try:
        with runner_for(provisioning) as tf:
            tf.init(on_log=sink.on_log)
            result = tf.destroy(
                on_event=sink.on_event,
                on_log=sink.on_log,
                on_progress=lambda f: ctx.progress(f),
                should_cancel=sink.should_cancel,
            )
    except TerraformCancelled:
        set_provisioning_status(provisioning.pk, ProvisioningStatus.FAILED, "destroy interrupted")
        raise Cancelled("terraform destroy interrupted") from None
    except TerraformError as exc:
        set_provisioning_status(provisioning.pk, ProvisioningStatus.FAILED, f"destroy failed: {exc}")
        raise StepFailed(
            f"{exc}; the cloud resources may still exist: fix the cause (credentials, quotas) and delete again"
        ) from None
    drop_state(provisioning)
    set_provisioning_status(provisioning.pk, ProvisioningStatus.DESTROYED, destroyed_at=timezone.now())
    return {"resources": sink.resources, "destroyed": result.destroy, "log": sink.tail()}


def _destroy_eta(params: dict) -> float:
    """Deletion's progress/ETA: a destroy takes minutes, a no-op (not provisioned) nothing."""
    applied = Provisioning.objects.filter(
        cluster_id=params.get("cluster_id"), applied_at__isnull=False, destroyed_at__isnull=True
    ).exists()
    return 600.0 if applied else 1.0


SETUP_STEPS = [Step("setup_cluster", "Prepare the cluster (namespaces, RBAC)", setup_cluster, eta=8)]
TEARDOWN_STEPS = [
    Step("teardown_cluster", "Remove BudCluster's namespaces and RBAC", teardown_cluster, eta=8)
]
DESTROY_STEPS = [
    Step(
        "stop_provisioning",
        "Stop provisioning still in progress",
        stop_provisioning,
        eta=1,
        poll=Poll(interval=2.0, timeout=600.0, what="the provisioning run to stop"),
    ),
    Step("destroy", "Destroy the cloud resources (terraform destroy)", destroy, eta=_destroy_eta),
]
