"""The clusters app's steps of the cluster lifecycle workflows.

``cluster.register`` and ``cluster.delete`` are composed in ``budcluster_site.workflows`` from these steps and
those of provisioning (cluster setup and teardown) and hardware (collection); this module declares no workflow
and imports no app above clusters.
"""

from __future__ import annotations

from django.conf import settings

from core import crypto
from core.gateway import GatewayError, Unreachable
from core.workflow import Step, StepContext, StepFailed, TransientError

from .choices import ClusterStatus, Platform, ReleaseStatus
from .models import Cluster, Release
from .services import gateway_for, record_event, set_status, step_cluster, verify_connection


def step_error(exc: GatewayError) -> Exception:
    """An unreachable cluster (connection refused or reset, timeout, 5xx) is retried for the transient window;
    anything else (401, 403, 422) fails the step at once."""
    return TransientError(str(exc)) if isinstance(exc, Unreachable) else StepFailed(str(exc))


def verify(ctx: StepContext) -> dict:
    """The first contact with a new server: an unreachable one fails at once (usually a wrong address, and the
    operator registering it is waiting for the answer). Each call is bounded, and all of them together
    (``CLUSTER_VERIFY_DEADLINE``): a server slow on every one of ~100 permission checks cannot hold a worker."""
    cluster = step_cluster(ctx)
    try:
        with gateway_for(cluster, budget=float(settings.CLUSTER_VERIFY_DEADLINE)) as gw:
            return verify_connection(gw)
    except GatewayError as exc:
        raise StepFailed(str(exc)) from None


def identify_platform(ctx: StepContext) -> dict:
    cluster = step_cluster(ctx)
    try:
        with gateway_for(cluster) as gw:
            platform = Platform.OPENSHIFT if gw.is_openshift() else Platform.KUBERNETES
    except GatewayError as exc:
        raise step_error(exc) from None
    Cluster.objects.filter(pk=cluster.pk).update(platform=platform)
    return {"platform": platform}


def store(ctx: StepContext) -> dict:
    """Make sure the stored kubeconfig reads back and sits under the current key; record what was learned."""
    cluster = step_cluster(ctx)
    if crypto.needs_rotation(_raw_token(cluster)):
        cluster.save(update_fields=["kubeconfig"])  # re-encrypts under the current key
    Cluster.objects.filter(pk=cluster.pk).update(
        kubernetes_version=ctx.outputs.get("verify", {}).get("version", "")
    )
    return {"key_id": crypto.current_key_id()}


def _raw_token(cluster: Cluster) -> str:
    from core.fields import raw_token

    return (
        Cluster.objects.filter(pk=cluster.pk)
        .annotate(token=raw_token("kubeconfig"))
        .values_list("token", flat=True)[0]
    )


def mark_available(ctx: StepContext) -> dict:
    cluster = step_cluster(ctx)
    set_status(cluster, ClusterStatus.AVAILABLE, "", kind="registration")
    return {"status": ClusterStatus.AVAILABLE}


def mark_error(ctx: StepContext) -> dict:
    cluster = Cluster.objects.filter(pk=ctx.params["cluster_id"]).first()
    if cluster is None:
        return {"skipped": "cluster gone"}
    reason = ctx.run.error or "registration did not finish"
    set_status(cluster, ClusterStatus.ERROR, reason, kind="registration")
    return {"status": ClusterStatus.ERROR}


CONNECT_STEPS = [
    Step("verify", "Verify connection and permissions", verify, eta=3),
    Step("identify_platform", "Identify platform", identify_platform, eta=1),
]
ACCEPT_STEPS = [
    Step("store", "Store encrypted credentials", store, eta=1),
    Step("mark_available", "Mark cluster available", mark_available, eta=1),
]
REGISTER_CLEANUP = [Step("mark_error", "Record why registration failed", mark_error)]


# --- deletion ----------------------------------------------------------------------------------------------------


def _namespaces_left_to_playbook() -> set[str]:
    """BudCluster's own namespace (collectors, and its service account with the token this teardown may be
    running with) is removed by the teardown playbook, last; without playbooks, here."""
    if not getattr(settings, "CLUSTER_SETUP_PLAYBOOKS", True):
        return set()
    return {getattr(settings, "COLLECTOR_NAMESPACE", "bud-system")}


def teardown(ctx: StepContext) -> dict:
    """Remove what BudCluster installed on the cluster (every recorded release, newest first), then the
    namespaces of every release the cluster ever had.

    Idempotent in both halves: a release is marked uninstalled as soon as its objects are gone, so a rerun after
    a worker died here skips it; the namespaces (with what no release recorded: a deployment's Secrets, its
    PVC) are taken from all the cluster's releases, uninstalled ones included, so the rerun still deletes the
    namespaces the dead worker never reached (deleting one already gone is a no-op)."""
    from .releases import uninstall

    cluster = step_cluster(ctx)
    every = list(Release.objects.filter(cluster=cluster).order_by("-created_at"))
    releases = [r for r in every if r.status != ReleaseStatus.UNINSTALLED]
    namespaces = {r.namespace for r in every} - _namespaces_left_to_playbook()
    if not releases and not namespaces:
        return {"releases": 0}
    try:
        with gateway_for(cluster) as gw:
            deleted = 0
            for release in releases:
                ctx.check_cancel()
                deleted += uninstall(gw, release)
                ctx.event(f"uninstalled {release.namespace}/{release.name}")
            ctx.failpoint("uninstalled")
            gone = [ns for ns in sorted(namespaces) if gw.delete("v1", "Namespace", ns)]
    except GatewayError as exc:
        if not ctx.params.get("force"):
            if isinstance(exc, Unreachable):
                raise TransientError(str(exc)) from None
            raise StepFailed(f"{exc}; retry, or delete with force=true to drop the record anyway") from None
        record_event(cluster, "deletion", f"cluster unreachable, nothing removed from it: {exc}")
        return {"skipped": str(exc)}
    return {
        "releases": len(releases),
        "objects_deleted": deleted,
        "namespaces": sorted(namespaces),
        "namespaces_deleted": gone,
    }


def delete_record(ctx: StepContext) -> dict:
    cluster = Cluster.objects.filter(pk=ctx.params["cluster_id"]).first()
    if cluster is None:  # this step ran before and its worker died before recording it: done already
        return {"deleted": ctx.params["cluster_id"], "already": True}
    name = cluster.name
    cluster.delete()
    return {"deleted": name}


def deletion_failed(ctx: StepContext) -> dict:
    cluster = Cluster.objects.filter(pk=ctx.params["cluster_id"]).first()
    if cluster is not None:
        set_status(cluster, ClusterStatus.ERROR, f"deletion failed: {ctx.run.error}", kind="deletion")
    return {}


TEARDOWN_STEPS = [Step("teardown", "Remove what BudCluster installed", teardown, eta=10)]
FORGET_STEPS = [Step("delete_record", "Delete the cluster record", delete_record, eta=1)]
DELETE_CLEANUP = [Step("deletion_failed", "Record why deletion failed", deletion_failed)]
