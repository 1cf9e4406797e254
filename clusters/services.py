"""Cluster domain functions: registration, updates, duplicate detection, live health, the periodic sweep, deletion.

The API, the admin, the management commands and the Celery tasks all call these functions; each owns its
eligibility rule and refuses with a ``RegistrationRefused`` carrying a stable code. Workflows are started by kind
(``cluster.register``, ``cluster.delete``: composed in ``budcluster_site.workflows``).
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import models, transaction
from django.db.models.functions import Cast
from django.utils import timezone

from core import crypto, probe
from core import events as core_events
from core.errors import Refused
from core.gateway import ClusterGateway, GatewayError
from core.models import Run, recorded_user
from core.sweep import sweep_async
from core.workflow import get_workflow

from . import extensions
from .choices import ClusterStatus
from .kubeconfig import KubeconfigError, ValidatedKubeconfig, server_identity, validate_kubeconfig
from .models import Cluster, ClusterEvent

logger = logging.getLogger(__name__)

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
STALE_REGISTRATION = timedelta(minutes=15)
ERROR_AFTER = timedelta(hours=24)
ERROR_RETRY_EVERY = timedelta(hours=24)


class RegistrationRefused(Refused):
    """A cluster request (register, update, re-verify, delete) is refused; the message says why."""

    class Code(models.TextChoices):
        KUBECONFIG_REQUIRED = "kubeconfig_required", "No kubeconfig was given"
        KUBECONFIG_TOO_LARGE = "kubeconfig_too_large", "The kubeconfig upload is larger than allowed"
        KUBECONFIG_UNDECRYPTABLE = (
            "kubeconfig_undecryptable",
            "The encrypted kubeconfig could not be decrypted",
        )
        KUBECONFIG_INVALID = "kubeconfig_invalid", "The kubeconfig is malformed, unsafe or lacks the context"
        NAME_TAKEN = "name_taken", "Another cluster has this name"
        SERVER_REGISTERED = "server_registered", "Another live cluster record has this API server"
        ACTIVE_DEPLOYMENTS = "active_deployments", "The cluster has active deployments (pass force)"
        ALREADY_DELETING = "already_deleting", "The cluster is already being deleted"
        CLUSTER_BUSY = "cluster_busy", "The cluster is being provisioned or deleted"


# --- kubeconfig in and out -------------------------------------------------------------------------------------


def read_kubeconfig_upload(
    *, text: str | bytes | None = None, envelope: Any = None, upload: Any = None
) -> bytes:
    """The kubeconfig bytes from plaintext, an uploaded file (refused unread when larger than
    ``KUBECONFIG_MAX_BYTES``) or an RSA envelope (``core.crypto.decrypt_envelope``)."""
    Code = RegistrationRefused.Code
    if upload is not None:
        limit = int(settings.KUBECONFIG_MAX_BYTES)
        if upload.size > limit:
            raise RegistrationRefused(
                f"kubeconfig refused: kubeconfig is {upload.size} bytes, more than the {limit} bytes allowed",
                code=Code.KUBECONFIG_TOO_LARGE,
            )
        return upload.read()
    if envelope is not None:
        try:
            return crypto.decrypt_envelope(envelope)
        except crypto.CryptoError as exc:
            raise RegistrationRefused(
                f"encrypted kubeconfig could not be decrypted: {exc}", code=Code.KUBECONFIG_UNDECRYPTABLE
            ) from None
    if text is None:
        raise RegistrationRefused("a kubeconfig is required", code=Code.KUBECONFIG_REQUIRED)
    return text.encode("utf-8") if isinstance(text, str) else text


def validate(raw: bytes, context: str | None = None) -> ValidatedKubeconfig:
    try:
        return validate_kubeconfig(raw, context)
    except KubeconfigError as exc:
        raise RegistrationRefused(
            f"kubeconfig refused: {exc}", code=RegistrationRefused.Code.KUBECONFIG_INVALID
        ) from None


def step_cluster(ctx: Any) -> Cluster:
    """The cluster a workflow step works on (``params["cluster_id"]``); fails the step if it was deleted."""
    from core.workflow import StepFailed

    try:
        return Cluster.objects.get(pk=ctx.params["cluster_id"])
    except Cluster.DoesNotExist:
        raise StepFailed(f"cluster {ctx.params['cluster_id']} no longer exists") from None


def kubeconfig_dict(cluster: Cluster) -> dict:
    """The decrypted kubeconfig of a cluster (in memory only)."""
    if not cluster.kubeconfig:
        raise GatewayError(f"cluster {cluster.name} has no kubeconfig")
    # The stored text is our own normalized dump (validated on the way in), so libyaml's safe loader is fine and
    # much faster than the pure-Python one on this hot path (every workflow step builds a gateway).
    return yaml.load(cluster.kubeconfig, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader


def gateway_for(
    cluster: Cluster,
    *,
    timeout: float = 10.0,
    connect_timeout: float | None = None,
    reuse: bool = True,
    budget: float | None = None,
) -> ClusterGateway:
    """A gateway to the cluster. ``reuse`` keeps its HTTP connection for the next step in this process (workflow
    steps and polls); the threaded health sweep and live checks pass ``reuse=False``. ``timeout`` bounds each
    call; ``budget`` bounds all of them together (see ``ClusterGateway``)."""
    return ClusterGateway(
        kubeconfig_dict(cluster), timeout=timeout, connect_timeout=connect_timeout, reuse=reuse, budget=budget
    )


# --- registration ------------------------------------------------------------------------------------------------


def find_duplicate(server_url: str, *, exclude_pk: int | None = None) -> tuple[Cluster | None, bool]:
    """Duplicate detection on the API server, as the original service did, but on the server's identity
    (``kubeconfig.server_identity``: ``https://LOCALHOST:443/`` and ``https://127.0.0.1`` are one server), not
    on the URL as written.

    Returns (existing cluster, replaceable). An AVAILABLE (or recently REGISTERING, or DELETING) cluster with the
    same server blocks registration; a NOT_AVAILABLE or ERROR one, or a REGISTERING one older than 15 minutes,
    is replaced by the new registration.
    """
    wanted = server_identity(server_url)
    # Stored URLs are as uploaded, so compare identities in Python: one short string per cluster.
    candidates = Cluster.objects.exclude(pk=exclude_pk) if exclude_pk else Cluster.objects.all()
    matches = [pk for pk, url in candidates.values_list("pk", "server_url") if server_identity(url) == wanted]
    existing = Cluster.objects.filter(pk__in=matches).defer("kubeconfig").order_by("pk").first()
    if existing is None:
        return None, False
    stale_registering = (
        existing.status == ClusterStatus.REGISTERING
        and existing.created_at < timezone.now() - STALE_REGISTRATION
    )
    replaceable = existing.status in (ClusterStatus.NOT_AVAILABLE, ClusterStatus.ERROR) or stale_registering
    return existing, replaceable


def record_event(cluster: Cluster, kind: str, message: str, old: str = "", new: str = "") -> None:
    """The cluster's own log row and, for a status change, the outbox event (in the caller's transaction)."""
    event = ClusterEvent.objects.create(
        cluster=cluster, kind=kind, message=message, old_status=old, new_status=new
    )
    if new and new != old:
        core_events.emit(*status_changed(event))


def status_changed(event: ClusterEvent) -> tuple[str, str, dict]:
    """The outbox event (type, subject, data) of a status change logged as ``event``."""
    cluster = event.cluster
    return (
        "cluster.status.changed",
        f"clusters/{cluster.pk}",
        {
            "cluster": cluster.pk,
            "name": cluster.name,
            "old_status": event.old_status,
            "new_status": event.new_status,
            "reason": event.message,
            "kind": event.kind,
        },
    )


def register_validated(data: dict, kubeconfig: bytes, user: Any) -> tuple[Cluster, Run]:
    """``register_cluster`` with the validated data of a registration body (the API's and the console's form,
    one serializer family) and the kubeconfig read from it (``read_kubeconfig_upload``)."""
    return register_cluster(
        name=data["name"],
        kubeconfig=kubeconfig,
        context=data.get("context") or None,
        ingress_url=data.get("ingress_url", ""),
        labels=data.get("labels") or {},
        user=user,
    )


def register_cluster(
    *,
    name: str,
    kubeconfig: bytes,
    context: str | None = None,
    ingress_url: str = "",
    labels: dict | None = None,
    user: Any = None,
) -> tuple[Cluster, Run]:
    """Validate, store (encrypted) and start the registration run. Raises RegistrationRefused."""
    checked = validate(kubeconfig, context)
    with transaction.atomic():
        _refuse_taken_name(name)
        existing, replaceable = find_duplicate(checked.server)
        if existing is not None:
            if not replaceable:
                raise RegistrationRefused(
                    f"cluster {existing.name!r} is already registered with server {checked.server} "
                    f"(status {existing.status})",
                    code=RegistrationRefused.Code.SERVER_REGISTERED,
                    status=409,
                )
            logger.info("registration of %s replaces %s (%s)", name, existing.name, existing.status)
            existing.delete()
        cluster = Cluster.objects.create(
            name=name,
            server_url=checked.server,
            context_name=checked.context_name,
            kubeconfig=checked.normalized_yaml(),
            ingress_url=ingress_url,
            labels=labels or {},
            status=ClusterStatus.REGISTERING,
            created_by=recorded_user(user),
        )
        record_event(cluster, "registration", "registration requested", new=ClusterStatus.REGISTERING)
        run = get_workflow("cluster.register").launch(
            subject=cluster, params={"cluster_id": cluster.pk}, user=user
        )
    return cluster, run


def _refuse_taken_name(name: str, *, exclude_pk: int | None = None) -> None:
    if Cluster.objects.filter(name=name).exclude(pk=exclude_pk).exists():
        raise RegistrationRefused(
            f"a cluster named {name!r} already exists", code=RegistrationRefused.Code.NAME_TAKEN, status=409
        )


def update_cluster(
    cluster: Cluster,
    changes: dict[str, Any],
    *,
    kubeconfig: bytes | None = None,
    context: str | None = None,
    user: Any = None,
) -> Run | None:
    """Change name, ingress URL or labels; with a new kubeconfig, store it and re-verify (returns that run).
    A refusal (name taken, kubeconfig invalid or already registered) changes nothing."""
    if "name" in changes:
        _refuse_taken_name(changes["name"], exclude_pk=cluster.pk)
    with transaction.atomic():
        for key, value in changes.items():
            setattr(cluster, key, value)
        if changes:
            cluster.save(update_fields=[*changes.keys(), "updated_at"])
        if kubeconfig is not None:
            return replace_kubeconfig(cluster, kubeconfig, context, user=user)
    return None


def rerun_registration(cluster: Cluster, *, user: Any = None) -> Run:
    """Verify a registered cluster again (the whole registration run: permissions, setup, collection)."""
    if cluster.status in (ClusterStatus.DELETING, ClusterStatus.PROVISIONING):
        raise RegistrationRefused(
            f"cluster {cluster.name} is {cluster.status}; registration cannot re-run now",
            code=RegistrationRefused.Code.CLUSTER_BUSY,
            status=409,
        )
    set_status(cluster, ClusterStatus.REGISTERING, "re-verification requested")
    return get_workflow("cluster.register").launch(
        subject=cluster, params={"cluster_id": cluster.pk}, user=user, title="Re-verify cluster"
    )


def replace_kubeconfig(
    cluster: Cluster, kubeconfig: bytes, context: str | None = None, user: Any = None
) -> Run:
    """Store a new kubeconfig and re-run verification (the registration workflow)."""
    checked = validate(kubeconfig, context)
    with transaction.atomic():
        existing, _ = find_duplicate(checked.server, exclude_pk=cluster.pk)
        if existing is not None:
            raise RegistrationRefused(
                f"cluster {existing.name!r} is already registered with server {checked.server}",
                code=RegistrationRefused.Code.SERVER_REGISTERED,
                status=409,
            )
        old = cluster.status
        cluster.kubeconfig = checked.normalized_yaml()
        cluster.server_url = checked.server
        cluster.context_name = checked.context_name
        cluster.status = ClusterStatus.REGISTERING
        cluster.reason = "kubeconfig replaced; verifying"
        cluster.save()
        record_event(cluster, "kubeconfig", "kubeconfig replaced; verifying", old=old, new=cluster.status)
        return get_workflow("cluster.register").launch(
            subject=cluster, params={"cluster_id": cluster.pk}, user=user, title="Re-verify cluster"
        )


# The one definition of what BudCluster may do on a cluster: the ClusterRole the setup playbook grants (and
# scripts/budcluster-kubeconfig.sh). Registration checks every rule of it before installing anything.
CLUSTER_ROLE_FILE = (
    Path(__file__).resolve().parent.parent / "playbooks" / "files" / "budcluster-clusterrole.yaml"
)
_OPENSHIFT_GROUP_SUFFIX = ".openshift.io"
# What the setup playbook puts on a cluster (its namespaces, account and RBAC names).
SETUP_VARS_FILE = Path(__file__).resolve().parent.parent / "playbooks" / "vars" / "budcluster.yml"


def setup_namespaces() -> list[str]:
    """The namespaces the setup playbook creates and teardown removes (``budcluster_namespaces``), read from
    the playbooks' own variables so that pages describing a deletion name what the playbook really deletes."""
    variables = yaml.safe_load(SETUP_VARS_FILE.read_text())
    return list(variables.get("budcluster_namespaces") or [])


@functools.cache
def required_permissions(openshift: bool = False) -> tuple[tuple[str, str, str], ...]:
    """(verb, group, resource) for every rule of BudCluster's ClusterRole; OpenShift-only groups only on
    OpenShift (a Kubernetes cluster's own role need not mention them)."""
    with open(CLUSTER_ROLE_FILE, encoding="utf-8") as fh:
        role = yaml.safe_load(fh)
    wanted = []
    for rule in role["rules"]:
        for group in rule.get("apiGroups") or [""]:
            if group.endswith(_OPENSHIFT_GROUP_SUFFIX) and not openshift:
                continue
            for resource in rule["resources"]:
                wanted.extend((verb, group, resource) for verb in rule["verbs"])
    return tuple(wanted)


def permission_name(verb: str, group: str, resource: str) -> str:
    """``create customresourcedefinitions.apiextensions.k8s.io (cluster-wide)``: what kubectl auth can-i
    takes, and where the right is needed (BudCluster's role is cluster-wide)."""
    base, _, subresource = resource.partition("/")
    name = f"{base}.{group}" if group else base
    if subresource:
        name += f"/{subresource}"
    return f"{verb} {name} (cluster-wide)"


def missing_permissions(gateway: ClusterGateway, openshift: bool = False) -> list[str]:
    """The rules of BudCluster's role the credentials lack, asked with SelfSubjectAccessReviews (eight at a
    time: a remote API server answers each in tens of milliseconds and the role has about a hundred)."""
    wanted = required_permissions(openshift)
    with ThreadPoolExecutor(max_workers=8) as pool:
        allowed = list(pool.map(lambda p: gateway.can_i(p[0], p[2], p[1]), wanted))
    return [permission_name(*p) for p, ok in zip(wanted, allowed, strict=True) if not ok]


def verify_connection(gateway: ClusterGateway) -> dict:
    """Reach the API, list nodes and check every permission BudCluster needs; raise GatewayError naming each
    missing one (before anything is installed, so a refused registration leaves nothing behind)."""
    version = gateway.version()
    nodes = gateway.list("v1", "Node")
    missing = missing_permissions(gateway, gateway.is_openshift())
    if missing:
        raise GatewayError(
            f"the credentials lack {len(missing)} permission(s) BudCluster needs "
            f"(see playbooks/files/budcluster-clusterrole.yaml): " + ", ".join(missing)
        )
    return {"version": version.get("gitVersion", ""), "nodes": len(nodes)}


def set_status(cluster: Cluster, status: str, reason: str = "", *, kind: str = "status") -> bool:
    """Compare-and-set a cluster's status with an event; False if it was already there."""
    old = cluster.status
    if old == status and cluster.reason == reason:
        return False
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "reason": reason, "updated_at": now}
    if status == ClusterStatus.NOT_AVAILABLE and old != ClusterStatus.NOT_AVAILABLE:
        fields["not_available_since"] = now
    if status == ClusterStatus.AVAILABLE:
        fields["not_available_since"] = None
    # The change, its log row and its outbox event commit together.
    with transaction.atomic():
        if not Cluster.objects.filter(pk=cluster.pk, status=old).update(**fields):
            return False
        for key, value in fields.items():
            setattr(cluster, key, value)
        if old != status:
            record_event(cluster, kind, reason or f"{old} → {status}", old=old, new=status)
    return True


# --- health --------------------------------------------------------------------------------------------------

HEALTH_CHECKS = ("api", "nodes", "gpu", "storage")


def check_health(
    cluster: Cluster,
    checks: list[str] | None = None,
    *,
    timeout: float = 10.0,
    deadline: float | None = None,
) -> dict:
    """Live health of one cluster (the ``/clusters/{id}/health`` endpoint).

    It runs inside a web request, so the whole check (host lookup and every call) ends within ``deadline``
    seconds (``CLUSTER_LIVE_CHECK_DEADLINE``, kept below the web worker's timeout): a cluster that drips or
    stalls is reported as not answering instead of the web worker being killed mid-request. ``timeout`` bounds
    each call."""
    checks = checks or list(HEALTH_CHECKS)
    unknown = sorted(set(checks) - set(HEALTH_CHECKS))
    if unknown:
        raise ValueError(f"unknown checks: {', '.join(unknown)} (choose from {', '.join(HEALTH_CHECKS)})")
    deadline = float(deadline or getattr(settings, "CLUSTER_LIVE_CHECK_DEADLINE", 15.0))
    result: dict[str, Any] = {"cluster": cluster.name, "healthy": True, "checks": {}}
    started = time.monotonic()
    try:
        with gateway_for(cluster, timeout=min(timeout, deadline), reuse=False, budget=deadline) as gw:
            version = gw.version()
            result["checks"]["api"] = {"ok": True, "version": version.get("gitVersion", "")}
            nodes = gw.list("v1", "Node") if {"nodes", "gpu"} & set(checks) else []
            if "nodes" in checks:
                ready = sum(1 for n in nodes if _node_ready(n))
                result["checks"]["nodes"] = {"ok": ready > 0, "total": len(nodes), "ready": ready}
            if "gpu" in checks:
                gpus = {}
                for node in nodes:
                    for resource, value in (node.get("status", {}).get("allocatable") or {}).items():
                        if resource in ("nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi"):
                            gpus[resource] = gpus.get(resource, 0) + int(value)
                result["checks"]["gpu"] = {"ok": True, "allocatable": gpus}
            if "storage" in checks:
                classes = gw.list("storage.k8s.io/v1", "StorageClass")
                default = [
                    c["metadata"]["name"]
                    for c in classes
                    if (c["metadata"].get("annotations") or {}).get(
                        "storageclass.kubernetes.io/is-default-class"
                    )
                    == "true"
                ]
                result["checks"]["storage"] = {
                    "ok": bool(default),
                    "storage_classes": [c["metadata"]["name"] for c in classes],
                    "default": default[0] if default else None,
                }
    except GatewayError as exc:
        result["checks"].setdefault("api", {"ok": False, "error": str(exc), "reason": exc.reason})
        if result["checks"]["api"].get("ok"):
            result["error"] = str(exc)
    result["healthy"] = all(c.get("ok") for c in result["checks"].values()) and "error" not in result
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _node_ready(node: dict) -> bool:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


@dataclass
class SweepReport:
    """What a sweep did. ``refused``: (cluster, why) for clusters BudCluster's own address guard would not let it
    call (a configuration error of this process, e.g. ``BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS`` off where the
    service has it on): they were not checked, and their status, reason and events are left as they were."""

    checked: int = 0
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "transitions": self.transitions,
            "refused": dict(self.refused),
            "seconds": round(self.seconds, 3),
        }


def _retry_due(cluster: Cluster, now) -> bool:
    """ERROR clusters that got there by being unreachable for a day are retried daily. A failed registration
    (or deletion) also ends in ERROR, but answering /version does not make it usable: it waits for a new
    registration run instead."""
    if cluster.not_available_since is None:
        return False
    return not cluster.last_retry_at or cluster.last_retry_at < now - ERROR_RETRY_EVERY


_KUBECONFIG_CONTEXT = Cluster._meta.get_field("kubeconfig").context


async def _probe(target: probe.ProbeTarget | tuple[bool, str], timeout: float) -> tuple[bool | None, str]:
    """(True, "") the API server answered; (False, why) it did not; (None, why) BudCluster's own address guard
    refused to connect, so nothing was asked of the cluster and there is no verdict on it. A cluster whose
    kubeconfig could not be read arrives with its outcome already."""
    if isinstance(target, tuple):
        return target
    return await probe.probe(target, timeout, probe.connection_pool())


def _probe_all(
    clusters: list[Cluster], timeout: float, workers: int, deadline: float
) -> dict[int, tuple[bool | None, str]]:
    """Probe every cluster, at most ``workers`` at once, on the process's sweep loop (``core.probe``: decrypted
    kubeconfigs cached by ciphertext, connections kept alive between sweeps, the address guard on every probe).
    What has not answered after ``deadline`` seconds is cancelled and reported not answering. Each probe is
    bounded already; the overall deadline keeps a sweep of many slow clusters from running into the next one
    (the beat starts one a minute)."""
    late = (
        False,
        f"no answer before the health sweep's deadline ({deadline:g}s, CLUSTER_HEALTH_SWEEP_DEADLINE): the "
        "API server is too slow, or too many clusters are slow at once",
    )
    prepared: list[tuple[Cluster, probe.ProbeTarget | tuple[bool, str]]] = []
    for cluster in clusters:
        try:
            token = getattr(cluster, "kubeconfig_token", None)  # the ciphertext as stored: the cache key
            if token is None:  # a row loaded decrypted: nothing to key a cache entry by
                target = probe.target_from_kubeconfig(kubeconfig_dict(cluster))
            else:
                target = probe.targets.get(token, context=_KUBECONFIG_CONTEXT)
            prepared.append((cluster, target))
        except (probe.ProbeRefused, GatewayError) as exc:
            prepared.append((cluster, (False, str(exc))))
    results = sweep_async(
        prepared, lambda item: _probe(item[1], timeout), concurrency=workers, deadline=deadline
    )
    outcomes: dict[int, tuple[bool | None, str]] = {}
    for (cluster, _), result in results:
        if isinstance(result, TimeoutError):
            outcomes[cluster.pk] = late
        elif isinstance(result, BaseException):  # a bug, not the cluster: said so, and the sweep goes on
            logger.error("health probe of %s crashed", cluster.name, exc_info=result)
            outcomes[cluster.pk] = (False, f"{type(result).__name__}: {result}")
        else:
            outcomes[cluster.pk] = result
    return outcomes


def sweep(
    *,
    timeout: float | None = None,
    workers: int | None = None,
    cluster_ids: list[int] | None = None,
    deadline: float | None = None,
) -> SweepReport:
    """Check every cluster concurrently and apply the status transitions in bulk.

    AVAILABLE → NOT_AVAILABLE (``not_available_since`` set); NOT_AVAILABLE → AVAILABLE (recovered);
    NOT_AVAILABLE for more than 24 h → ERROR; ERROR clusters are retried once a day. One dead cluster costs only
    its own timeout: probes run in a thread pool, each bounded by ``timeout`` in total. The whole sweep ends
    within ``deadline`` (``CLUSTER_HEALTH_SWEEP_DEADLINE``): a cluster not probed by then counts as not answering.

    A cluster whose API server BudCluster's own address guard refuses (``core.netguard``) was not probed at all:
    that is this process's configuration, not the cluster's health, so it is listed in ``report.refused`` and
    logged as an error, and its row (status, reason, last check, events) is not touched.
    """
    timeout = timeout or float(getattr(settings, "CLUSTER_HEALTH_TIMEOUT", 5.0))
    workers = workers or int(getattr(settings, "CLUSTER_HEALTH_CONCURRENCY", 64))
    deadline = deadline or float(getattr(settings, "CLUSTER_HEALTH_SWEEP_DEADLINE", 45.0))
    started = time.monotonic()
    now = timezone.now()
    # The kubeconfig is read as stored, encrypted: decrypting every row in the query would cost the sweep one
    # AES-GCM open and one YAML parse per cluster per minute; core.probe caches them by ciphertext instead.
    qs = (
        Cluster.objects.filter(status__in=ClusterStatus.checked_by_sweep())
        .defer("kubeconfig")
        .annotate(kubeconfig_token=Cast("kubeconfig", output_field=models.TextField()))
    )
    if cluster_ids is not None:
        qs = qs.filter(pk__in=cluster_ids)
    clusters = [c for c in qs if c.status != ClusterStatus.ERROR or _retry_due(c, now)]
    results = _probe_all(clusters, timeout, workers, deadline)

    report = SweepReport(checked=len(clusters))
    changed: list[Cluster] = []
    events: list[ClusterEvent] = []
    # The verdicts are written only for clusters whose status is still the one the probe started from: a
    # deletion, re-registration or recovery written while the probes ran wins (compare-and-set, under the rows'
    # locks, so nothing can slip in between the check and the write).
    probed_from = {c.pk: c.status for c in clusters}
    with transaction.atomic():
        still = {
            pk
            for pk, status in Cluster.objects.select_for_update()
            .filter(pk__in=list(probed_from))
            .values_list("pk", "status")
            .order_by("pk")
            if probed_from[pk] == status
        }
        verdicts_before = {c.pk: _verdict_fields(c) for c in clusters}
        _apply_sweep(clusters, results, still, now, report, changed, events)
        report.checked -= len(report.refused)
        # Most clusters only get their last_checked: one plain UPDATE for them (a bulk_update of thousands of
        # rows is a CASE per column per row, and cost a 10,000-cluster sweep more than all its probes).
        only_checked = [c.pk for c in changed if _verdict_fields(c) == verdicts_before[c.pk]]
        for i in range(0, len(only_checked), _IDS_PER_UPDATE):
            Cluster.objects.filter(pk__in=only_checked[i : i + _IDS_PER_UPDATE]).update(last_checked=now)
        Cluster.objects.bulk_update(
            [c for c in changed if _verdict_fields(c) != verdicts_before[c.pk]],
            ["status", "reason", "not_available_since", "last_checked", "last_retry_at"],
            batch_size=500,
        )
        ClusterEvent.objects.bulk_create(events, batch_size=500)
        core_events.emit_many(
            status_changed(e) for e in events if e.new_status and e.new_status != e.old_status
        )
    report.seconds = time.monotonic() - started
    if report.refused:
        logger.error(
            "health sweep: %d cluster(s) not checked, BudCluster's outbound-address guard refused their API server "
            "(a configuration error of this process; their status is left as it was): %s",
            len(report.refused),
            "; ".join(f"{name}: {why}" for name, why in report.refused),
        )
    return report


_IDS_PER_UPDATE = 10_000  # well below PostgreSQL's 65,535 parameters per statement


def _verdict_fields(cluster: Cluster) -> tuple:
    """What a sweep may change on a cluster besides ``last_checked``."""
    return (cluster.status, cluster.reason, cluster.not_available_since, cluster.last_retry_at)


def _apply_sweep(
    clusters: list[Cluster],
    results: dict[int, tuple[bool | None, str]],
    still: set[int],
    now,
    report: SweepReport,
    changed: list[Cluster],
    events: list[ClusterEvent],
) -> None:
    """The sweep's transitions, applied to the clusters still in the status their probe started from."""
    for cluster in clusters:
        if cluster.pk not in still:
            continue
        ok, error = results[cluster.pk]
        if ok is None:  # refused by our own guard: no verdict on the cluster, nothing of its row changes
            report.refused.append((cluster.name, error))
            continue
        old = cluster.status
        cluster.last_checked = now
        if cluster.status == ClusterStatus.ERROR:
            cluster.last_retry_at = now
        if ok:
            if old != ClusterStatus.AVAILABLE:
                cluster.status = ClusterStatus.AVAILABLE
                cluster.reason = ""
                cluster.not_available_since = None
        elif old == ClusterStatus.AVAILABLE:
            cluster.status = ClusterStatus.NOT_AVAILABLE
            cluster.not_available_since = now
            cluster.reason = error
        elif old == ClusterStatus.NOT_AVAILABLE:
            cluster.reason = error
            if cluster.not_available_since and cluster.not_available_since < now - ERROR_AFTER:
                cluster.status = ClusterStatus.ERROR
                cluster.reason = f"not available for more than 24 h: {error}"
                cluster.last_retry_at = now  # next retry in a day
        else:
            cluster.reason = error
        if cluster.status != old:
            message = "recovered" if cluster.status == ClusterStatus.AVAILABLE else cluster.reason
            events.append(
                ClusterEvent(
                    cluster=cluster, kind="health", old_status=old, new_status=cluster.status, message=message
                )
            )
            report.transitions.append((cluster.name, old, cluster.status))
        changed.append(cluster)


# --- deletion ------------------------------------------------------------------------------------------------


def _active_run(cluster: Cluster, kind: str) -> bool:
    from core.choices import RunStatus

    return Run.objects.filter(kind=kind, subject_id=str(cluster.pk), status__in=RunStatus.active()).exists()


def request_delete(cluster: Cluster, *, force: bool = False, user: Any = None) -> Run:
    """Start the deletion run; refuses while a deletion run is in progress, and while deployments are active
    unless ``force``. A cluster left DELETING by a deletion run that ended without finishing may be deleted
    again: whatever happened to a run, its subject can always leave the state the run put it in."""
    if cluster.status == ClusterStatus.DELETING and _active_run(cluster, "cluster.delete"):
        raise RegistrationRefused(
            f"cluster {cluster.name} is already being deleted",
            code=RegistrationRefused.Code.ALREADY_DELETING,
            status=409,
        )
    active = extensions.active_deployments(cluster)
    if active and not force:
        raise RegistrationRefused(
            f"cluster {cluster.name} has {active} active deployment(s); delete them first or pass force=true",
            code=RegistrationRefused.Code.ACTIVE_DEPLOYMENTS,
            status=409,
        )
    with transaction.atomic():
        # Under the row's lock: a health sweep writing its verdicts waits for this, then leaves DELETING alone.
        old = Cluster.objects.select_for_update().values_list("status", flat=True).get(pk=cluster.pk)
        Cluster.objects.filter(pk=cluster.pk).update(
            status=ClusterStatus.DELETING, reason="deletion requested", updated_at=timezone.now()
        )
        cluster.status = ClusterStatus.DELETING
        record_event(cluster, "deletion", "deletion requested", old=old, new=ClusterStatus.DELETING)
        return get_workflow("cluster.delete").launch(
            subject=cluster, params={"cluster_id": cluster.pk, "force": force}, user=user
        )
