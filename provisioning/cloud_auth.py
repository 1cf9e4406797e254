"""The provisioned cluster's long-lived credential, minted by BudCluster after apply, never by Terraform.

Why not in the Terraform module
-------------------------------
Terraform keeps every resource attribute and every output in its state in plain text (``sensitive`` only hides a
value from its UI), and BudCluster keeps that state in PostgreSQL (``pg`` backend) or a file. A module that
creates the service-account token Secret with the kubernetes provider, or outputs a kubeconfig, writes the
cluster's credential there. So the cloud modules create nothing inside the cluster and output no credential, only
where the cluster is (``cluster_endpoint``, ``cluster_ca_certificate``; see ``terraform/README.md``), and
BudCluster mints the credential itself. The one copy it keeps is the kubeconfig the clusters app stores encrypted.

How
---
1. A **bootstrap token**: short-lived, of the cloud identity that ran Terraform, made from the cloud credential
   the provisioning already holds (encrypted):

   * EKS (:func:`eks_token`): what ``aws eks get-token`` computes. ``k8s-aws-v1.`` followed by the unpadded
     URL-safe base64 of an STS ``GetCallerIdentity`` URL presigned with SigV4 for 60 seconds, the header
     ``x-k8s-aws-id: <cluster name>`` signed in (so the token is good for that cluster only). Computed locally
     with botocore, no network. The EKS authenticator presents the URL to STS, learns the IAM identity, and the
     access entry the module made for the identity that created the cluster
     (``bootstrap_cluster_creator_admin_permissions``) makes it cluster admin.
   * AKS (:func:`aks_token`): an Entra ID access token of the credential's service principal for the AKS server
     application (scope ``6dae42f8-4368-4678-94ff-3960e28e3630/.default``), client-credentials grant through
     MSAL, from ``PROVISIONING_AZURE_AUTHORITY_HOST`` (sovereign clouds; tests point it at a local fake). The
     module gave that principal "Azure Kubernetes Service RBAC Cluster Admin" on the cluster.
   * A module standing in for a cloud (``terraform/testing/cloud-cluster``) is given that admin token as its
     sensitive ``bootstrap_token`` variable instead (stored encrypted, never in the state).

2. Through the cluster gateway, with a kubeconfig of (endpoint and CA from the outputs, bootstrap token) that
   must pass the same kubeconfig guard and outbound-address guard as an uploaded one: server-side apply (field
   manager ``budcluster``) of the ServiceAccount and a ClusterRoleBinding, and a ``kubernetes.io/service-account-token``
   Secret unless an earlier attempt made one; the token controller fills its ``token``.
3. A kubeconfig of (endpoint, CA, that token) and nothing else. :func:`provisioning.workflows.credential` hands it
   to ``clusters.services.replace_kubeconfig``, which stores it encrypted and starts the registration run that
   verifies it. The bootstrap token is used for this call only and kept nowhere.

One call of :func:`mint` is one check: it raises :class:`NotReady` when the cluster cannot be used *yet* (the
token controller has not filled the Secret; the API server does not accept the cloud identity yet: Azure role
assignments take minutes to reach a new cluster; its address does not resolve yet) and the workflow step polls it
until ``PROVISIONING_CREDENTIAL_TIMEOUT``. :class:`CredentialRefused` is final (Entra ID refused the client
secret, the endpoint is refused by the guard, the API server refused an object): the step fails. Neither message
carries a token or a cloud secret (they pass a Redactor that knows them).

Idempotent: the service account and binding have fixed names and are server-side applied; the token Secret is
looked up (label ``app.kubernetes.io/managed-by=budcluster``, type, the account's annotation) before one is made.
So a re-run (a crash after the Secret was created, a redelivered step, :func:`renew`) finds the same Secret and
reuses its token: never a second Secret, never AlreadyExists. The names come from settings:
``PROVISIONING_CREDENTIAL_NAMESPACE`` (``kube-system``), ``PROVISIONING_CREDENTIAL_SERVICE_ACCOUNT``
(``budcluster``), ``PROVISIONING_CREDENTIAL_CLUSTER_ROLE`` (``cluster-admin``); the binding is
``<service account>-<role>`` and the Secret ``<service account>-token-<8 random hex>``. The binding is never named
``budcluster``: that is the setup playbook's binding of BudCluster's own ClusterRole, and the role a binding refers
to cannot change.

Rotation and revocation: delete the Secret (the API server rejects its token at once), then :func:`renew` mints a
new one and registers the new kubeconfig. The new Secret gets a new name on purpose: a legacy service-account token
is a signed JWT of the namespace, the account (name, uid) and the Secret's name only, so a Secret re-created under
the old name would carry the very token that was just revoked.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from core.conf import setting
from core.gateway import (
    AddressNotAllowed,
    ClusterGateway,
    Conflict,
    Forbidden,
    GatewayError,
    Invalid,
    NotFound,
    Unauthorized,
    Unreachable,
)
from provisioning.redact import Redactor

if TYPE_CHECKING:
    from core.models import Run
    from provisioning.models import Provisioning


EKS_TOKEN_PREFIX = "k8s-aws-v1."  # noqa: S105 - a format marker, not a secret
EKS_CLUSTER_HEADER = "x-k8s-aws-id"
# What aws-iam-authenticator and `aws eks get-token` use; the EKS authenticator accepts the token for 15 minutes.
EKS_PRESIGN_SECONDS = 60
# The Entra ID application every AKS cluster with Entra ID integration accepts tokens for (the same in all clouds).
AKS_SERVER_APPLICATION = "6dae42f8-4368-4678-94ff-3960e28e3630"
AKS_SCOPE = f"{AKS_SERVER_APPLICATION}/.default"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 - a Secret type
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"
LABELS = {"app.kubernetes.io/managed-by": "budcluster", "app.kubernetes.io/part-of": "budcluster"}
BOOTSTRAP_VARIABLE = "bootstrap_token"


class CredentialRefused(Exception):
    """Minting cannot succeed by waiting: the message (no secrets in it) says what to fix."""


class NotReady(Exception):
    """Not possible yet (identity not authorized yet, token not filled yet, endpoint not up yet); check again."""


@dataclass(frozen=True)
class Account:
    """The service account whose token BudCluster keeps, and the ClusterRole it is bound to."""

    namespace: str = "kube-system"
    name: str = "budcluster"
    cluster_role: str = "cluster-admin"

    @classmethod
    def from_settings(cls) -> Account:
        return cls(
            namespace=str(setting("PROVISIONING_CREDENTIAL_NAMESPACE", cls.namespace)),
            name=str(setting("PROVISIONING_CREDENTIAL_SERVICE_ACCOUNT", cls.name)),
            cluster_role=str(setting("PROVISIONING_CREDENTIAL_CLUSTER_ROLE", cls.cluster_role)),
        )

    @property
    def secret_prefix(self) -> str:
        return f"{self.name}-token-"

    @property
    def binding(self) -> str:
        return f"{self.name}-{self.cluster_role}"


@dataclass(frozen=True)
class MintedCredential:
    kubeconfig: str = field(repr=False)
    account: Account
    secret: str  # the token Secret's name
    # When the token Secret was created (the token's age, for rotation); a re-run that reuses the Secret
    # reports the same time.
    secret_created: str

    def summary(self) -> dict[str, str]:
        """What the step records: names and the token's creation time, never the token."""
        return {
            "service_account": f"{self.account.namespace}/{self.account.name}",
            "cluster_role": self.account.cluster_role,
            "binding": self.account.binding,
            "secret": f"{self.account.namespace}/{self.secret}",
            "secret_created": self.secret_created,
        }


# --- bootstrap tokens --------------------------------------------------------------------------------------------


def eks_token(
    cluster_name: str,
    region: str,
    *,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None = None,
) -> str:
    """A bearer token for the EKS cluster ``cluster_name``, as ``aws eks get-token`` makes it (no network)."""
    import botocore.session
    from botocore.exceptions import BotoCoreError
    from botocore.signers import RequestSigner

    if not (access_key_id and secret_access_key):
        raise CredentialRefused("the AWS credential has no access key id or secret access key")
    try:
        session = botocore.session.Session()
        session.set_credentials(access_key_id, secret_access_key, session_token or None)
        # The regional STS endpoint (the EKS authenticator accepts every region's): the global one would tie the
        # token to us-east-1 and fail for opt-in regions.
        session.set_config_variable("sts_regional_endpoints", "regional")
        sts = session.create_client("sts", region_name=region)
        signer = RequestSigner(
            sts.meta.service_model.service_id,
            region,
            "sts",
            "v4",
            session.get_credentials(),
            session.get_component("event_emitter"),
        )
        url = signer.generate_presigned_url(
            {
                "method": "GET",
                "url": f"{sts.meta.endpoint_url}/?Action=GetCallerIdentity&Version=2011-06-15",
                "body": {},
                "headers": {EKS_CLUSTER_HEADER: cluster_name},
                "context": {},
            },
            region_name=region,
            expires_in=EKS_PRESIGN_SECONDS,
            operation_name="",
        )
    except BotoCoreError as exc:
        # botocore's messages name regions and parameters, never the secret key.
        raise CredentialRefused(f"cannot sign an EKS token for region {region!r}: {exc}") from None
    return EKS_TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def aks_token(
    *,
    tenant_id: str,
    client_id: str,
    client_secret: str,
    authority_host: str | None = None,
    timeout: float = 30.0,
    verify: bool | str = True,
) -> str:
    """An Entra ID access token of a service principal for the AKS server application (client credentials).

    ``authority_host`` defaults to ``PROVISIONING_AZURE_AUTHORITY_HOST`` (``https://login.microsoftonline.com``;
    ``https://login.microsoftonline.us`` or ``https://login.chinacloudapi.cn`` for the sovereign clouds). MSAL's
    instance discovery (a call to the public cloud asking whether the host is a Microsoft cloud) is off: the host
    is the operator's setting, not user input. ``verify`` is a CA bundle path for tests."""
    import msal
    import requests

    if not (tenant_id and client_id and client_secret):
        raise CredentialRefused("the Azure credential needs a tenant id, a client id and a client secret")
    host = (authority_host or setting("PROVISIONING_AZURE_AUTHORITY_HOST", DEFAULT_AUTHORITY_HOST)).rstrip(
        "/"
    )
    redactor = Redactor([client_secret])
    try:
        with _EntraHttp(verify=verify, timeout=timeout) as http:
            app = msal.ConfidentialClientApplication(
                client_id,
                client_credential=client_secret,
                authority=f"{host}/{tenant_id}",
                instance_discovery=False,
                http_client=http,
                token_cache=msal.TokenCache(),  # nothing outlives this call
            )
            result = app.acquire_token_for_client(scopes=[AKS_SCOPE])
    except requests.RequestException as exc:
        raise NotReady(redactor.redact(f"cannot reach Entra ID at {host}: {type(exc).__name__}")) from None
    except ValueError as exc:
        # MSAL's answer when the tenant's OpenID configuration cannot be read (an unknown tenant).
        raise CredentialRefused(
            redactor.redact(f"Entra ID at {host} does not know tenant {tenant_id!r}: {str(exc)[:300]}")
        ) from None
    token = (result or {}).get("access_token")
    if not token:
        error = (result or {}).get("error") or "no access token"
        description = ((result or {}).get("error_description") or "").splitlines()[0:1]
        detail = f"{error}: {description[0]}" if description else error
        raise CredentialRefused(
            redactor.redact(f"Entra ID refused the service principal {client_id}: {detail}")
        ) from None
    return token


class _EntraHttp:
    """The HTTP client MSAL is given: every request bounded by ``timeout``, and a CA bundle given here wins.

    (requests lets ``REQUESTS_CA_BUNDLE`` from the environment replace a session's ``verify``, so it is passed
    with each request; proxies from the environment still apply.)"""

    def __init__(self, *, verify: bool | str, timeout: float) -> None:
        import requests

        self._session = requests.Session()
        self._verify = verify
        self._timeout = timeout

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("timeout", self._timeout)
        if self._verify is not True:
            kwargs["verify"] = self._verify
        return kwargs

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._session.get(url, **self._kwargs(kwargs))

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._session.post(url, **self._kwargs(kwargs))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> _EntraHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bootstrap_token(provisioning: Provisioning) -> str:
    """The short-lived admin token of the provisioned cluster, from what the provisioning holds (encrypted)."""
    from provisioning.choices import CloudProvider

    given = str((provisioning.secret_variables or {}).get(BOOTSTRAP_VARIABLE) or "")
    if given:
        return given
    outputs = provisioning.outputs or {}
    credential = provisioning.credential
    secret = credential.secret or {}
    if provisioning.provider == CloudProvider.AWS:
        return eks_token(
            str(outputs.get("cluster_name") or provisioning.cluster.name),
            str(outputs.get("region") or provisioning.region or credential.region),
            access_key_id=secret.get("access_key_id", ""),
            secret_access_key=secret.get("secret_access_key", ""),
            session_token=secret.get("session_token"),
        )
    if provisioning.provider == CloudProvider.AZURE:
        return aks_token(
            tenant_id=credential.tenant_id,
            client_id=secret.get("client_id", ""),
            client_secret=secret.get("client_secret", ""),
        )
    raise CredentialRefused(f"no way to authenticate to a {provisioning.provider} cluster")


# --- minting -----------------------------------------------------------------------------------------------------


def _kubeconfig(name: str, server: str, ca_data: str, token: str, user: str) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = ca_data
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
    }


def _gateway(document: dict[str, Any], *, timeout: float, budget: float) -> ClusterGateway:
    """A gateway for a kubeconfig built here from module outputs: checked like an uploaded one first."""
    from clusters.kubeconfig import KubeconfigError, validate_kubeconfig

    try:
        checked = validate_kubeconfig(yaml.safe_dump(document, sort_keys=False))
    except KubeconfigError as exc:
        raise CredentialRefused(
            f"the cluster endpoint from the module's outputs was refused: {exc}"
        ) from None
    try:
        return ClusterGateway(checked.normalized, timeout=timeout, budget=budget)
    except AddressNotAllowed as exc:
        raise CredentialRefused(
            f"the cluster endpoint from the module's outputs was refused: {exc}"
        ) from None
    except Unreachable as exc:
        raise NotReady(str(exc)) from None


# Namespaces every cluster has; BudCluster does not apply (and so label) them.
_BUILT_IN_NAMESPACES = ("kube-system", "default")


def _objects(account: Account) -> list[dict[str, Any]]:
    """The service account first (its uid is read from the answer), then its binding."""
    meta = {"namespace": account.namespace, "labels": LABELS}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account.name, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": account.binding, "labels": LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": account.cluster_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account.name, "namespace": account.namespace}],
        },
    ]


def _token_secret(account: Account) -> dict[str, Any]:
    # A fresh name per Secret, not a fixed one: a legacy service-account token is a JWT of the namespace, the
    # account's name and uid and the Secret's name only (no issue time, no id), so a Secret re-created under the
    # same name gets byte for byte the token that was revoked by deleting it.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TOKEN_SECRET_TYPE,
        "metadata": {
            "name": f"{account.secret_prefix}{secrets.token_hex(4)}",
            "namespace": account.namespace,
            "labels": LABELS,
            "annotations": {SA_NAME_ANNOTATION: account.name},
        },
    }


def _existing_token_secret(gw: ClusterGateway, account: Account) -> dict[str, Any] | None:
    """The account's token Secret made by an earlier attempt (the oldest, should there be several)."""
    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    candidates = [
        item
        for item in gw.list("v1", "Secret", account.namespace, label_selector=selector)
        if item.get("type") == TOKEN_SECRET_TYPE
        and str((item.get("metadata") or {}).get("name", "")).startswith(account.secret_prefix)
        and ((item.get("metadata") or {}).get("annotations") or {}).get(SA_NAME_ANNOTATION) == account.name
        and not (item.get("metadata") or {}).get("deletionTimestamp")
    ]
    candidates.sort(key=lambda i: (i["metadata"].get("creationTimestamp") or "", i["metadata"]["name"]))
    return candidates[0] if candidates else None


def mint(
    *,
    server: str,
    ca_data: str,
    bootstrap: str,
    cluster_name: str,
    account: Account | None = None,
    timeout: float = 10.0,
    budget: float = 60.0,
    also_hide: Iterable[str] = (),
) -> MintedCredential:
    """One attempt: make sure the service account, its binding and its token Secret exist (with the ``bootstrap``
    token), and return the kubeconfig of the Secret's token. Raises :class:`NotReady` or
    :class:`CredentialRefused`; ``also_hide`` are more values no message may show (cloud secrets)."""
    account = account or Account.from_settings()
    redactor = Redactor([bootstrap, *also_hide])
    bootstrap_config = _kubeconfig(cluster_name, server, ca_data, bootstrap, f"{cluster_name}-bootstrap")
    try:
        with _gateway(bootstrap_config, timeout=timeout, budget=budget) as gw:
            if account.namespace not in _BUILT_IN_NAMESPACES:
                gw.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": account.namespace, "labels": LABELS},
                    }
                )
            applied = [gw.apply(obj) for obj in _objects(account)]
            sa_uid = (applied[0].get("metadata") or {}).get("uid")
            secret = _existing_token_secret(gw, account) or gw.apply(_token_secret(account))
    except (Unauthorized, Forbidden) as exc:
        raise NotReady(
            redactor.redact(f"the API server does not accept the cloud identity (yet): {exc}")
        ) from None
    except AddressNotAllowed as exc:  # our own guard: waiting will not change its answer
        raise CredentialRefused(redactor.redact(str(exc))) from None
    except Unreachable as exc:
        raise NotReady(redactor.redact(str(exc))) from None
    except (Invalid, Conflict, NotFound) as exc:
        raise CredentialRefused(redactor.redact(str(exc))) from None
    except GatewayError as exc:
        raise NotReady(redactor.redact(str(exc))) from None
    metadata = secret.get("metadata") or {}
    where = f"Secret {account.namespace}/{metadata.get('name')}"
    owner_uid = (metadata.get("annotations") or {}).get(SA_UID_ANNOTATION)
    if owner_uid and sa_uid and owner_uid != sa_uid:
        raise NotReady(f"{where} belongs to an earlier service account; waiting for the token controller")
    encoded = (secret.get("data") or {}).get("token")
    if not encoded:
        raise NotReady(f"waiting for the token controller to fill {where}")
    try:
        token = base64.b64decode(encoded, validate=True).decode("ascii").strip()
    except (ValueError, UnicodeDecodeError):
        raise CredentialRefused(f"{where} holds a token that is not base64 ASCII") from None
    document = _kubeconfig(cluster_name, server, ca_data, token, f"{cluster_name}-{account.name}")
    return MintedCredential(
        kubeconfig=yaml.safe_dump(document, sort_keys=False),
        account=account,
        secret=str(metadata.get("name")),
        secret_created=str(metadata.get("creationTimestamp") or ""),
    )


def mint_for(provisioning: Provisioning, *, account: Account | None = None) -> MintedCredential:
    """:func:`mint` for a provisioned cluster: endpoint and CA from its Terraform outputs, bootstrap token from its
    cloud credential."""
    outputs = provisioning.outputs or {}
    server = str(outputs.get("cluster_endpoint") or "")
    ca_data = str(outputs.get("cluster_ca_certificate") or "")
    if not server or not ca_data:
        missing = [n for n, v in (("cluster_endpoint", server), ("cluster_ca_certificate", ca_data)) if not v]
        raise CredentialRefused(
            f"module {provisioning.module} returned no kubeconfig and no {' or '.join(missing)} output "
            "(non-sensitive) to build one from"
        )
    token = bootstrap_token(provisioning)
    return mint(
        server=server,
        ca_data=ca_data,
        bootstrap=token,
        cluster_name=str(outputs.get("cluster_name") or provisioning.cluster.name),
        account=account,
        also_hide=[*provisioning.credential.secret_values(), *_secret_variables(provisioning)],
    )


def _secret_variables(provisioning: Provisioning) -> list[str]:
    return [str(v) for v in (provisioning.secret_variables or {}).values() if v]


def renew(provisioning: Provisioning, *, user: Any = None, timeout: float = 120.0) -> Run:
    """Mint the cluster's credential again and register the new kubeconfig (rotation, after the token Secret was
    deleted; or recovery, after the stored kubeconfig stopped working). Returns the registration run.

    Waits (polling, up to ``timeout`` seconds) for what :func:`mint` is waiting for."""
    from clusters.services import replace_kubeconfig

    deadline = time.monotonic() + timeout
    while True:
        try:
            minted = mint_for(provisioning)
            break
        except NotReady as exc:
            if time.monotonic() >= deadline:
                raise CredentialRefused(f"gave up after {timeout:g}s: {exc}") from None
            time.sleep(1.0)
    return replace_kubeconfig(provisioning.cluster, minted.kubeconfig.encode(), user=user)
