"""Domain functions of the provisioning app: the only place its business rules live.

The API, the admin, the ``provision`` command and the workflow steps all call these functions. A request they
will not carry out raises :class:`ProvisioningRefused` with a stable ``code`` (the API answers it through core's
exception handler; the admin and the commands print its message).

* Credentials: :func:`create_credential` checks the provider's fields (:func:`check_credential_fields`, the one
  rule wherever a credential is created or changed) and stores the secret part encrypted; :func:`update_credential`
  changes one and rotates its secret under the same rule;
  :func:`delete_credential` refuses while a provisioned cluster still needs it (a destroy without credentials
  would leave cloud resources nobody can remove).
* :func:`start_provisioning` freezes everything a later destroy needs on the cluster's
  :class:`~provisioning.models.Provisioning` row (module directory, variables, state location) and starts
  the ``cluster.provision`` run (by kind, through ``core.workflow.get_workflow``). :func:`create_and_provision`
  first creates the cluster record (status ``provisioning``, no kubeconfig). Both take the credential as a
  record or as its id (the API's ``credential_id``).
* The module is chosen by provider (``terraform/modules/aws-eks`` / ``azure-aks``).
  ``PROVISIONING_MODULE_OVERRIDE`` is a **test aid**: it points every provisioning at another module
  (``terraform/testing/local-cluster``, whose "cluster" is an existing API server such as a devcluster
  virtual cluster); ``PROVISIONING_MODULE_VARIABLES`` adds variables to every provisioning (for that
  module: api_server, ca_data, token), and so does the JSON file ``PROVISIONING_MODULE_VARIABLES_FILE`` while
  the override is set (``make run`` writes one for its devcluster's spare virtual cluster). Only variables
  the module declares are passed, and those it declares ``sensitive`` are stored encrypted and reach
  Terraform as ``TF_VAR_*``.
* State: the ``pg`` backend in the service's own PostgreSQL, one schema per cluster (``tf_cluster_<id>``),
  when the database is PostgreSQL; a local state file under ``var/terraform/`` otherwise (the embedded
  SQLite profile). ``PROVISIONING_STATE_BACKEND`` forces one.
* :func:`approve` records the approval of a run waiting for it and wakes the waiting step at once; the approver
  needs ``core.approve_run`` and ``provisioning.view_provisioning`` and, unless
  ``PROVISIONING_APPROVER_MUST_DIFFER`` is off, is not the user who requested the run.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models.deletion import ProtectedError
from django.utils import timezone

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from clusters.services import record_event, set_status
from core import events as core_events
from core.choices import RunStatus, StepPhase, StepStatus
from core.errors import Refused
from core.models import Run, RunEvent, RunStep, recorded_user
from core.workflow import get_workflow, send_chain

from .choices import CREDENTIAL_SECRET_FIELDS, CloudProvider, ProvisioningStatus, StateBackend
from .hcl import load_module
from .models import CloudCredential, Provisioning
from .terraform import TerraformRunner

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent
MODULES = {
    CloudProvider.AWS: REPO_DIR / "terraform" / "modules" / "aws-eks",
    CloudProvider.AZURE: REPO_DIR / "terraform" / "modules" / "azure-aks",
}
# Both clouds accept this (EKS: letters, digits, hyphens; AKS additionally "_"): check before Terraform does.
CLUSTER_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")


# The run every provisioning attempt is (declared in provisioning.workflows, started by kind).
PROVISION_KIND = "cluster.provision"


class ProvisioningRefused(Refused):
    """A credential or provisioning request is refused; the message says why (answered as 400/404/409)."""

    class Code(models.TextChoices):
        UNKNOWN_PROVIDER = "unknown_provider", "The cloud provider is not one of aws, azure"
        INVALID_CREDENTIALS = "invalid_credentials", "Credential fields missing or not taken by the provider"
        CREDENTIAL_PROVIDER_MISMATCH = "credential_provider_mismatch", "Credential of another provider"
        NAME_TAKEN = "name_taken", "Another credential or cluster has this name"
        INVALID_NAME = "invalid_name", "The cluster name cannot be used for a cloud cluster"
        CREDENTIAL_IN_USE = "credential_in_use", "A provisioned cluster still needs the credential"
        NO_SUCH_CREDENTIAL = "no_such_credential", "No cloud credential has this id or name"
        INVALID_NODE_POOLS = "invalid_node_pools", "Node pool sizes, names or roles are inconsistent"
        MISSING_VARIABLES = "missing_variables", "The Terraform module needs variables not given"
        MODULE_NOT_FOUND = "module_not_found", "The Terraform module directory does not exist"
        ALREADY_REGISTERED = "already_registered", "The cluster has a kubeconfig (not made to provision)"
        NOT_PROVISIONABLE = "not_provisionable", "The cluster's status does not allow provisioning it"
        PROVISIONING_EXISTS = "provisioning_exists", "The cluster's provisioning did not fail or stop"
        CLUSTER_BUSY = "cluster_busy", "A provisioning run of the cluster is still going"
        MODULE_CHANGED = "module_changed", "Resources of an earlier attempt exist with another module"
        NOT_AWAITING_APPROVAL = "not_awaiting_approval", "The run is not a provisioning run"
        RUN_ENDED = "run_ended", "The run has already ended"
        AUTO_APPROVED = "auto_approved", "The run was started with auto_approve"
        PLAN_NOT_READY = "plan_not_ready", "The plan is not ready yet"
        ALREADY_APPROVED = "already_approved", "The plan was already approved"
        APPROVAL_NOT_ALLOWED = "approval_not_allowed", "The approver lacks approve_run or view_provisioning"
        SELF_APPROVAL = "self_approval", "The approver requested the run (PROVISIONING_APPROVER_MUST_DIFFER)"


Code = ProvisioningRefused.Code


# --- credentials -------------------------------------------------------------------------------------------------


def check_credential_fields(
    provider: str, secret: Mapping[str, str], *, tenant_id: str = "", subscription_id: str = ""
) -> None:
    """The rule for a credential's fields, wherever one is created or changed (API, admin, commands): a known
    provider, only its secret fields, every required one non-empty (Azure: also tenant and subscription ids).
    A refusal names the fields in ``data["fields"]`` (so a form can mark them), never their values."""
    if provider not in CREDENTIAL_SECRET_FIELDS:
        raise ProvisioningRefused(
            f"unknown provider {provider!r} (choose from aws, azure)", code=Code.UNKNOWN_PROVIDER
        )
    required, optional = CREDENTIAL_SECRET_FIELDS[provider]
    unknown = sorted(set(secret) - set(required) - set(optional))
    if unknown:
        raise ProvisioningRefused(
            f"{provider} credentials take no field(s) {', '.join(unknown)}",
            code=Code.INVALID_CREDENTIALS,
            data={"fields": unknown},
        )
    missing = [f for f in required if not secret.get(f)]
    if provider == CloudProvider.AZURE:
        missing += [f for f, v in (("tenant_id", tenant_id), ("subscription_id", subscription_id)) if not v]
    if missing:
        raise ProvisioningRefused(
            f"{provider} credentials need {', '.join(missing)}",
            code=Code.INVALID_CREDENTIALS,
            data={"fields": missing},
        )


def create_credential(
    *,
    name: str,
    provider: str,
    secret: Mapping[str, str],
    region: str = "",
    tenant_id: str = "",
    subscription_id: str = "",
    description: str = "",
    user: Any = None,
) -> CloudCredential:
    check_credential_fields(provider, secret, tenant_id=tenant_id, subscription_id=subscription_id)
    try:
        with transaction.atomic():
            return CloudCredential.objects.create(
                name=name,
                provider=provider,
                secret={k: str(v) for k, v in secret.items() if v},
                region=region,
                tenant_id=tenant_id,
                subscription_id=subscription_id,
                description=description,
                created_by=recorded_user(user),
            )
    except IntegrityError:
        raise ProvisioningRefused(
            f"a credential named {name!r} already exists", code=Code.NAME_TAKEN, status=409
        ) from None


# The fields of a credential that may change after it is created (the provider may not: make a new credential).
CREDENTIAL_CHANGEABLE = ("name", "region", "tenant_id", "subscription_id", "description")


def update_credential(
    credential: CloudCredential, *, secret: Mapping[str, str] | None = None, **changes: str
) -> CloudCredential:
    """Change a credential's fields and/or rotate its secret (``PATCH /credentials/{id}``, the admin's form).

    ``secret`` is the whole secret to store (each interface builds it: the API and the admin apply the fields
    given to the stored ones), so it must hold every required field, as on creation; ``None`` keeps the stored
    secret. Either way the result is checked with :func:`check_credential_fields` (an Azure credential keeps its
    tenant and subscription). Runs already started keep the secret their Terraform process was given."""
    unknown = sorted(set(changes) - set(CREDENTIAL_CHANGEABLE))
    if unknown:
        raise ValueError(f"update_credential takes no {', '.join(unknown)}")
    merged = {field: changes.get(field, getattr(credential, field)) for field in CREDENTIAL_CHANGEABLE}
    new_secret = dict(secret) if secret is not None else dict(credential.secret or {})
    check_credential_fields(
        credential.provider,
        new_secret,
        tenant_id=merged["tenant_id"],
        subscription_id=merged["subscription_id"],
    )
    for field, value in merged.items():
        setattr(credential, field, value)
    if secret is not None:
        credential.secret = {k: str(v) for k, v in new_secret.items() if v}
    try:
        with transaction.atomic():
            credential.save()
    except IntegrityError:
        raise ProvisioningRefused(
            f"a credential named {merged['name']!r} already exists", code=Code.NAME_TAKEN, status=409
        ) from None
    return credential


def delete_credential(credential: CloudCredential) -> None:
    users = list(
        credential.provisionings.exclude(status=ProvisioningStatus.DESTROYED).values_list(
            "cluster__name", flat=True
        )
    )
    if users:
        raise ProvisioningRefused(
            f"credential {credential.name!r} is still needed to manage cluster(s) {', '.join(users)}",
            code=Code.CREDENTIAL_IN_USE,
            status=409,
        )
    try:
        credential.delete()
    except ProtectedError:
        raise ProvisioningRefused(
            f"credential {credential.name!r} is in use", code=Code.CREDENTIAL_IN_USE, status=409
        ) from None


def find_credential(ref: str | int) -> CloudCredential:
    """A credential by id or name (the ``provision`` command accepts both)."""
    qs = CloudCredential.objects.all()
    found = qs.filter(pk=int(ref)).first() if str(ref).isdigit() else None
    found = found or qs.filter(name=str(ref)).first()
    if found is None:
        raise ProvisioningRefused(f"no cloud credential {ref!r}", code=Code.NO_SUCH_CREDENTIAL, status=404)
    return found


def check_credential(credential: CloudCredential, provider: str) -> None:
    """The credential is for `provider` and complete (no cloud call: Terraform's plan checks access)."""
    if credential.provider != provider:
        raise ProvisioningRefused(
            f"credential {credential.name!r} is for {credential.provider}, not {provider}",
            code=Code.CREDENTIAL_PROVIDER_MISMATCH,
            status=400,
        )
    missing = credential.missing_fields()
    if missing:
        raise ProvisioningRefused(
            f"credential {credential.name!r} lacks {', '.join(missing)}", code=Code.INVALID_CREDENTIALS
        )


def get_credential(pk: int) -> CloudCredential:
    """A credential by id only (the API's ``credential_id``: a name that looks like a number is not an id)."""
    found = CloudCredential.objects.filter(pk=pk).first()
    if found is None:
        raise ProvisioningRefused(f"no cloud credential {pk}", code=Code.NO_SUCH_CREDENTIAL, status=404)
    return found


# --- node pools and module variables -----------------------------------------------------------------------------


def normalize_node_pools(pools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Exactly one system pool plus optional GPU pools; sizes consistent; names unique."""
    result: list[dict[str, Any]] = []
    for raw in pools:
        pool = dict(raw)
        pool.setdefault("role", "system" if pool.get("name") == "system" else "gpu")
        pool.setdefault("labels", {})
        pool.setdefault("taints", [])
        low, want, high = (int(pool.get(k, 0)) for k in ("min_size", "desired_size", "max_size"))
        if not (0 <= low <= want <= high) or high < 1:
            raise ProvisioningRefused(
                f"node pool {pool.get('name')!r}: need 0 <= min_size <= desired_size <= max_size, max_size >= 1",
                code=Code.INVALID_NODE_POOLS,
            )
        result.append(pool)
    names = [p["name"] for p in result]
    if len(names) != len(set(names)):
        raise ProvisioningRefused("node pool names must be unique", code=Code.INVALID_NODE_POOLS)
    systems = [p for p in result if p["role"] == "system"]
    if len(systems) != 1:
        raise ProvisioningRefused(
            f"exactly one node pool must have role 'system' (got {len(systems)})",
            code=Code.INVALID_NODE_POOLS,
        )
    return result


def _taints(pool: Mapping[str, Any]) -> list[dict[str, str]]:
    return [
        {"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]}
        for t in pool.get("taints") or []
    ]


def cloud_variables(
    provider: str,
    *,
    cluster_name: str,
    region: str,
    kubernetes_version: str,
    node_pools: list[dict],
    credential,
) -> dict[str, Any]:
    """Variables of the provider's module (``terraform/modules/*/variables.tf``) for a request."""
    system = next(p for p in node_pools if p["role"] == "system")
    gpus = [p for p in node_pools if p["role"] != "system"]
    common = {"cluster_name": cluster_name, "kubernetes_version": kubernetes_version}
    if provider == CloudProvider.AWS:
        gpu_pools = []
        for p in gpus:
            pool = {
                "name": p["name"],
                "instance_type": p["instance_type"],
                "min_size": p["min_size"],
                "max_size": p["max_size"],
                "desired_size": p["desired_size"],
                "labels": p.get("labels") or {},
            }
            if p.get("taints"):  # none given: the module's default GPU taint applies
                pool["taints"] = _taints(p)
            gpu_pools.append(pool)
        return {
            **common,
            "region": region,
            "system_node_pool": {
                "instance_type": system["instance_type"],
                "min_size": system["min_size"],
                "max_size": system["max_size"],
                "desired_size": system["desired_size"],
            },
            "gpu_node_pools": gpu_pools,
        }
    gpu_pools = []
    for p in gpus:
        pool = {
            "name": p["name"],
            "vm_size": p["instance_type"],
            "min_count": p["min_size"],
            "max_count": p["max_size"],
            "node_count": p["desired_size"],
            "labels": p.get("labels") or {},
        }
        if p.get("taints"):
            pool["taints"] = _taints(p)
        gpu_pools.append(pool)
    return {
        **common,
        "location": region,
        "subscription_id": credential.subscription_id or None,
        "system_node_pool": {
            "vm_size": system["instance_type"],
            "min_count": system["min_size"],
            "max_count": system["max_size"],
            "node_count": system["desired_size"],
        },
        "gpu_node_pools": gpu_pools,
    }


def module_dir(provider: str) -> Path:
    override = getattr(settings, "PROVISIONING_MODULE_OVERRIDE", "") or ""
    if override:
        path = Path(override)
        return path if path.is_absolute() else (Path(settings.BASE_DIR) / path)
    return MODULES[provider]


def override_variables_file() -> dict[str, Any]:
    """The variables in ``PROVISIONING_MODULE_VARIABLES_FILE`` (a test aid, like the override it goes with).

    Read at each request rather than at start-up: ``make run`` starts web and workers before its devcluster is
    up and writes the file afterwards. Without the override the file is ignored, so a leftover setting never
    feeds a cloud module. Messages name the file, never its contents (it holds a token)."""
    path = getattr(settings, "PROVISIONING_MODULE_VARIABLES_FILE", "") or ""
    if not path or not (getattr(settings, "PROVISIONING_MODULE_OVERRIDE", "") or ""):
        return {}
    file = Path(path) if Path(path).is_absolute() else Path(settings.BASE_DIR) / path
    try:
        mode = file.stat().st_mode
        if mode & 0o077:
            raise ProvisioningRefused(
                f"PROVISIONING_MODULE_VARIABLES_FILE {file} is readable by other users: chmod 600 it",
                code=Code.MISSING_VARIABLES,
                status=500,
            )
        values = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvisioningRefused(
            f"PROVISIONING_MODULE_VARIABLES_FILE {file} does not exist (`make run` writes it once its devcluster "
            "is up)",
            code=Code.MISSING_VARIABLES,
            status=500,
        ) from None
    except (OSError, ValueError):
        values = None
    if not isinstance(values, dict):
        raise ProvisioningRefused(
            f"PROVISIONING_MODULE_VARIABLES_FILE {file} is not a readable JSON object",
            code=Code.MISSING_VARIABLES,
            status=500,
        )
    return values


def module_variables(
    module: Path, candidates: Mapping[str, Any], node_pools: list[dict]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, sensitive) variables: the candidates the module declares, split by its ``sensitive`` flag.

    A module that is not a cloud one (the override) also gets ``node_count``: the sum of desired sizes.
    """
    spec = load_module(module)
    values = {**candidates, "node_count": sum(int(p["desired_size"]) for p in node_pools)}
    values.update(getattr(settings, "PROVISIONING_MODULE_VARIABLES", {}) or {})
    values.update(override_variables_file())
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in values.items():
        if name not in spec.variables or value is None:
            continue
        (secret if spec.variables[name].get("sensitive") is True else plain)[name] = value
    missing = sorted(spec.required_variables - set(plain) - set(secret))
    if missing:
        raise ProvisioningRefused(
            f"module {module.name} needs variable(s) {', '.join(missing)}", code=Code.MISSING_VARIABLES
        )
    return plain, secret


# --- state --------------------------------------------------------------------------------------------------------


def state_location(cluster: Cluster) -> tuple[str, str]:
    """(backend, schema name or state file) for a cluster's Terraform state."""
    choice = getattr(settings, "PROVISIONING_STATE_BACKEND", "auto") or "auto"
    if choice == "auto":
        engine = settings.DATABASES["default"]["ENGINE"]
        choice = StateBackend.PG if "postgresql" in engine else StateBackend.LOCAL
    if choice == StateBackend.PG:
        return StateBackend.PG, f"tf_cluster_{cluster.pk}"
    var_dir = Path(getattr(settings, "VAR_DIR", Path(settings.BASE_DIR) / "var"))
    return StateBackend.LOCAL, str(var_dir / "terraform" / f"cluster-{cluster.pk}" / "terraform.tfstate")


def state_database_url() -> str:
    """Connection string of the database holding pg-backend state (the service's own by default)."""
    explicit = getattr(settings, "PROVISIONING_STATE_DATABASE_URL", "") or ""
    if explicit:
        return explicit
    from urllib.parse import quote

    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


def drop_state(provisioning: Provisioning) -> None:
    """Remove the (empty, after a destroy) state: the schema, or the state file and its backups."""
    if provisioning.backend == StateBackend.PG:
        import psycopg
        from psycopg import sql

        with psycopg.connect(state_database_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(provisioning.state_name))
            )
        return
    path = Path(provisioning.state_name)
    for candidate in (path, path.with_name(path.name + ".backup")):
        candidate.unlink(missing_ok=True)


def runner_for(provisioning: Provisioning):
    """A :class:`~provisioning.terraform.TerraformRunner` for this cluster's module, state and credential."""
    module = Path(provisioning.module)
    if not module.is_absolute():
        module = Path(settings.BASE_DIR) / module
    kwargs: dict[str, Any] = {}
    if provisioning.backend == StateBackend.PG:
        kwargs.update(backend="pg", schema_name=provisioning.state_name, pg_conn_str=state_database_url())
    else:
        Path(provisioning.state_name).parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(backend="local", state_path=provisioning.state_name)
    credential = provisioning.credential
    return TerraformRunner(
        module,
        variables=provisioning.variables,
        secret_variables={k: str(v) for k, v in (provisioning.secret_variables or {}).items()},
        env=credential.environment(provisioning.region),
        binary=getattr(settings, "TERRAFORM_BINARY", None) or None,
        cli_config_file=getattr(settings, "TERRAFORM_CLI_CONFIG_FILE", None) or None,
        timeouts=getattr(settings, "TERRAFORM_TIMEOUTS", None) or None,
        cancel_grace=float(getattr(settings, "TERRAFORM_CANCEL_GRACE", 120.0)),
        **kwargs,
    )


def store_plan(provisioning: Provisioning, plan: bytes, summary: dict) -> None:
    Provisioning.objects.filter(pk=provisioning.pk).update(
        plan=base64.b64encode(plan).decode("ascii"), plan_summary=summary, updated_at=timezone.now()
    )


def saved_plan(provisioning: Provisioning) -> bytes | None:
    return base64.b64decode(provisioning.plan) if provisioning.plan else None


# --- provisioning -------------------------------------------------------------------------------------------------


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(settings.BASE_DIR).resolve()))
    except ValueError:
        return str(path.resolve())


def create_and_provision(
    *, name: str, credential: CloudCredential | int, user: Any = None, **spec: Any
) -> tuple[Provisioning, Run]:
    """Create the cluster record (status provisioning, no kubeconfig) and start provisioning it."""
    credential = _credential(credential)
    with transaction.atomic():
        if Cluster.objects.filter(name=name).exists():
            raise ProvisioningRefused(
                f"a cluster named {name!r} already exists", code=Code.NAME_TAKEN, status=409
            )
        _check_name(name)
        cluster = Cluster.objects.create(
            name=name,
            status=ClusterStatus.PROVISIONING,
            reason="provisioning requested",
            created_by=recorded_user(user),
        )
        record_event(cluster, "provisioning", "cluster record created for provisioning", new=cluster.status)
        return start_provisioning(cluster, credential=credential, user=user, **spec)


def _credential(credential: CloudCredential | int) -> CloudCredential:
    return credential if isinstance(credential, CloudCredential) else get_credential(credential)


def _check_name(name: str) -> None:
    if not CLUSTER_NAME_RE.match(name):
        raise ProvisioningRefused(
            f"cluster name {name!r} cannot be used for a cloud cluster: start with a letter, then letters, "
            "digits or '-' (at most 63)",
            code=Code.INVALID_NAME,
        )


def start_provisioning(
    cluster: Cluster,
    *,
    provider: str,
    region: str,
    kubernetes_version: str,
    node_pools: Iterable[Mapping[str, Any]],
    credential: CloudCredential | int,
    auto_approve: bool = False,
    user: Any = None,
) -> tuple[Provisioning, Run]:
    """Freeze the request on the cluster's provisioning record and start the ``cluster.provision`` run."""
    credential = _credential(credential)
    _check_name(cluster.name)
    if provider not in MODULES:
        raise ProvisioningRefused(
            f"unknown provider {provider!r} (choose from aws, azure)", code=Code.UNKNOWN_PROVIDER
        )
    check_credential(credential, provider)
    pools = normalize_node_pools(node_pools)
    module = module_dir(provider)
    if not module.is_dir():
        raise ProvisioningRefused(
            f"Terraform module not found: {module}", code=Code.MODULE_NOT_FOUND, status=500
        )
    candidates = cloud_variables(
        provider,
        cluster_name=cluster.name,
        region=region,
        kubernetes_version=kubernetes_version,
        node_pools=pools,
        credential=credential,
    )
    plain, secret = module_variables(module, candidates, pools)

    with transaction.atomic():
        cluster = Cluster.objects.select_for_update().get(pk=cluster.pk)
        if cluster.kubeconfig:
            raise ProvisioningRefused(
                f"cluster {cluster.name} already has a kubeconfig: only clusters created for provisioning "
                "can be provisioned",
                code=Code.ALREADY_REGISTERED,
                status=409,
            )
        existing = Provisioning.objects.select_for_update().filter(cluster=cluster).first()
        if existing is not None:
            if existing.status not in ProvisioningStatus.restartable() and existing.status != "pending":
                raise ProvisioningRefused(
                    f"cluster {cluster.name} is already {existing.get_status_display().lower()}",
                    code=Code.PROVISIONING_EXISTS,
                    status=409,
                )
            if (
                existing.run_id
                and Run.objects.filter(pk=existing.run_id, status__in=RunStatus.active()).exists()
            ):
                raise ProvisioningRefused(
                    f"cluster {cluster.name} is being provisioned", code=Code.CLUSTER_BUSY, status=409
                )
            if existing.needs_destroy and existing.module != _relative(module):
                raise ProvisioningRefused(
                    "resources from an earlier attempt exist with another module; delete the cluster first",
                    code=Code.MODULE_CHANGED,
                    status=409,
                )
        elif cluster.status != ClusterStatus.PROVISIONING:
            raise ProvisioningRefused(
                f"cluster {cluster.name} is {cluster.status}; create it with POST /clusters/provision",
                code=Code.NOT_PROVISIONABLE,
                status=409,
            )
        backend, state_name = (
            (existing.backend, existing.state_name) if existing is not None else state_location(cluster)
        )
        provisioning = existing or Provisioning(cluster=cluster)
        provisioning.provider = provider
        provisioning.region = region
        provisioning.kubernetes_version = kubernetes_version
        provisioning.node_pools = pools
        provisioning.credential = credential
        provisioning.auto_approve = auto_approve
        provisioning.module = _relative(module)
        provisioning.variables = plain
        provisioning.secret_variables = secret or None
        provisioning.backend = backend
        provisioning.state_name = state_name
        provisioning.status = ProvisioningStatus.PENDING
        provisioning.reason = ""
        provisioning.plan = None
        provisioning.plan_summary = {}
        provisioning.approved_at = None
        provisioning.approved_by = None
        provisioning.registration_run = None
        if existing is None:
            provisioning.created_by = recorded_user(user)
        provisioning.save()
        set_status(
            cluster, ClusterStatus.PROVISIONING, f"provisioning on {provider} {region}", kind="provisioning"
        )
        run = get_workflow(PROVISION_KIND).launch(
            subject=cluster,
            params={"cluster_id": cluster.pk, "provisioning_id": provisioning.pk},
            user=user,
            title=f"Provision {cluster.name} on {provider} {region}",
        )
        Provisioning.objects.filter(pk=provisioning.pk).update(run=run)
        provisioning.run = run
        record_event(cluster, "provisioning", f"provisioning started (run {run.pk})")
    return provisioning, run


def set_provisioning_status(provisioning_id: int, status: str, reason: str = "", **fields: Any) -> None:
    """Write the status; a change is an outbox event in the same transaction (and waiting for approval one more,
    ``io.bud.provisioning.awaiting_approval``, for whoever approves plans)."""
    with transaction.atomic():
        before = (
            Provisioning.objects.select_for_update()
            .filter(pk=provisioning_id)
            .values("status", "cluster_id", "cluster__name", "run_id")
            .first()
        )
        Provisioning.objects.filter(pk=provisioning_id).update(
            status=status, reason=reason, updated_at=timezone.now(), **fields
        )
        if before is None or before["status"] == status:
            return
        data = {
            "provisioning": provisioning_id,
            "cluster": before["cluster_id"],
            "name": before["cluster__name"],
            "run": str(before["run_id"] or ""),
            "old_status": before["status"],
            "new_status": status,
            "reason": reason,
        }
        subject = f"provisionings/{provisioning_id}"
        core_events.emit("provisioning.status.changed", subject, data)
        if status == ProvisioningStatus.AWAITING_APPROVAL:
            core_events.emit(
                "provisioning.awaiting_approval",
                subject,
                {
                    **data,
                    "plan": Provisioning.objects.filter(pk=provisioning_id).values_list(
                        "plan_summary", flat=True
                    )[0],
                },
            )


APPROVE_STEP = "approve"


# What approving a plan takes: the right to approve runs and to see the plan approved.
APPROVE_PERMISSIONS = ("core.approve_run", "provisioning.view_provisioning")


def approve(run: Run, user: Any) -> Provisioning:
    """Approve the plan of a provisioning run as ``user``; the waiting step goes on at once.

    The one place approval rules live (the API, the admin action and ``manage.py approve_run --as USERNAME``
    call it): the approver is a named, active user with ``core.approve_run`` and
    ``provisioning.view_provisioning`` (403 ``approval_not_allowed``), and, while
    ``PROVISIONING_APPROVER_MUST_DIFFER`` is on (the default), not the user who requested the run (403
    ``self_approval``). Raises ProvisioningRefused."""
    named = getattr(user, "is_authenticated", False) and user.is_active
    if not (named and user.has_perms(APPROVE_PERMISSIONS)):
        raise ProvisioningRefused(
            "approving a plan needs a named user with the core.approve_run and provisioning.view_provisioning "
            "permissions",
            code=Code.APPROVAL_NOT_ALLOWED,
            status=403,
        )
    provisioning = Provisioning.objects.filter(run=run).select_related("cluster").first()
    if provisioning is None:
        raise ProvisioningRefused(
            f"run {run.pk} is not a provisioning run waiting for approval",
            code=Code.NOT_AWAITING_APPROVAL,
            # The run exists (a missing one is a 404 before this): it is in a state that cannot be approved.
            status=409,
        )
    if run.status not in RunStatus.active():
        raise ProvisioningRefused(
            f"run {run.pk} has already ended ({run.status})", code=Code.RUN_ENDED, status=409
        )
    requesters = {pk for pk in (run.created_by_id, provisioning.created_by_id) if pk is not None}
    if getattr(settings, "PROVISIONING_APPROVER_MUST_DIFFER", True) and user.pk in requesters:
        raise ProvisioningRefused(
            "the user who requested a provisioning run may not approve its plan; another user with "
            "core.approve_run must (PROVISIONING_APPROVER_MUST_DIFFER)",
            code=Code.SELF_APPROVAL,
            status=403,
        )
    if provisioning.auto_approve:
        raise ProvisioningRefused(
            "this run was started with auto_approve; nothing to approve", code=Code.AUTO_APPROVED, status=409
        )
    plan_done = RunStep.objects.filter(run=run, name="plan", status=StepStatus.SUCCEEDED).exists()
    if not plan_done:
        raise ProvisioningRefused(
            "the plan is not ready yet; approve once it is shown", code=Code.PLAN_NOT_READY, status=409
        )
    now = timezone.now()
    with transaction.atomic():
        updated = Provisioning.objects.filter(pk=provisioning.pk, run=run, approved_at__isnull=True).update(
            approved_at=now,
            approved_by=recorded_user(user),
            updated_at=now,
        )
        if not updated:
            raise ProvisioningRefused("the plan was already approved", code=Code.ALREADY_APPROVED, status=409)
        who = getattr(user, "username", "") or "someone"
        RunEvent.objects.create(
            run=run, step=APPROVE_STEP, status="approved", message=f"plan approved by {who}", data={"by": who}
        )
        waiting = RunStep.objects.filter(
            run=run, name=APPROVE_STEP, status=StepStatus.WAITING, phase=StepPhase.MAIN
        ).exists()
        if waiting:
            # Wake the waiting step now instead of at its next poll; its own delayed message then finds the
            # step done and does nothing (step entry is a compare-and-set).
            remaining = list(
                RunStep.objects.filter(
                    run=run, phase=StepPhase.MAIN, order__gte=_step_order(run, APPROVE_STEP)
                )
                .order_by("order")
                .values_list("name", flat=True)
            )
            transaction.on_commit(lambda: send_chain(run.pk, remaining))
    provisioning.refresh_from_db()
    return provisioning


def _step_order(run: Run, name: str) -> int:
    return RunStep.objects.filter(run=run, name=name).values_list("order", flat=True).first() or 0
