"""A cluster provisioned with a cloud-shaped module gets its credential from BudCluster, never from Terraform.

Real worker, real Terraform (1.0.3, null provider, pg backend) and ``terraform/testing/cloud-cluster``, which like
the EKS and AKS modules returns only the cluster's endpoint and CA. The "provisioned" cluster is a real control
plane (kube-apiserver with RBAC, kube-controller-manager's token controller), not the devcluster: the emulator
has no token controller and accepts one bearer token per cluster, and whether a minted service-account token
authenticates, and stops authenticating once its Secret is deleted, is Kubernetes semantics.

Cloud APIs cannot be reached here, so the short-lived token of the cloud identity (EKS: a presigned STS token;
AKS: an Entra ID token; see tests/provisioning/test_cloud_auth.py) is played by a 10-minute TokenRequest token of a
cluster-admin service account, handed to the module as its ``bootstrap_token`` variable.

The devcluster serves the cheap checks of one minting attempt (no token controller there: the attempt waits).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import psycopg
import pytest
import yaml
from kubernetes import client

from clusters.choices import ClusterStatus
from clusters.models import Cluster
from clusters.services import gateway_for
from core.choices import RunStatus, StepStatus
from core.gateway import ClusterGateway, Unauthorized
from core.models import Run, RunEvent, RunStep
from devcluster.real.testing import real_cluster_fixture
from provisioning import cloud_auth
from provisioning.choices import ProvisioningStatus
from provisioning.models import Provisioning
from provisioning.services import runner_for
from tests.worker import wait_for

from .conftest import drop_schema, state_rows, state_url

# Read by the worker subprocess (it inherits this environment when it starts, after collection): the step
# re-checks the token Secret every half second instead of every 5.
os.environ.setdefault("PROVISIONING_CREDENTIAL_POLL_INTERVAL", "0.5")

pytestmark = pytest.mark.django_db(transaction=True)

cp = real_cluster_fixture(name="cp", nodes="cpu-small", scope="module")

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
ACCOUNT = cloud_auth.Account()  # the defaults: kube-system/budcluster bound to cluster-admin
NODE_POOLS = [
    {"name": "system", "instance_type": "m6i.large", "min_size": 1, "max_size": 1, "desired_size": 1}
]


@pytest.fixture(scope="module")
def bootstrap(cp) -> str:
    """A short-lived cluster-admin token, as the cloud identity that ran Terraform has one."""
    api = cp.client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account("kube-system", {"metadata": {"name": "cloud-identity"}})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "cloud-identity"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "cloud-identity", "namespace": "kube-system"}],
        }
    )
    request = core.create_namespaced_service_account_token(
        "cloud-identity", "kube-system", {"spec": {"expirationSeconds": 600}}
    )
    return request.status.token


@pytest.fixture
def cloud_module(settings, cp, bootstrap) -> None:
    settings.PROVISIONING_MODULE_OVERRIDE = "terraform/testing/cloud-cluster"
    settings.PROVISIONING_MODULE_VARIABLES = {
        "api_server": cp.url,
        "ca_data": base64.b64encode(cp.ca_pem).decode(),
        "bootstrap_token": bootstrap,
    }


def _token_secrets(cp) -> list[str]:
    """Names of the service-account token Secrets of BudCluster's account."""
    secrets = client.CoreV1Api(cp.client()).list_namespaced_secret(ACCOUNT.namespace).items
    return [
        s.metadata.name
        for s in secrets
        if s.type == cloud_auth.TOKEN_SECRET_TYPE
        and (s.metadata.annotations or {}).get(cloud_auth.SA_NAME_ANNOTATION) == ACCOUNT.name
    ]


def _token(cluster: Cluster) -> str:
    cluster.refresh_from_db()
    return yaml.safe_load(cluster.kubeconfig)["users"][0]["user"]["token"]


def _whoami(cluster: Cluster) -> str:
    with gateway_for(cluster, reuse=False) as gw:
        review = gw.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    return review["status"]["userInfo"]["username"]


def _refused(cluster: Cluster) -> bool:
    try:
        _whoami(cluster)
    except Unauthorized:
        return True
    return False


def _finished(run_id, timeout: float = 300) -> Run:
    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.status in RunStatus.terminal() else None

    return wait_for(done, timeout=timeout, what=f"run {run_id} to finish")


def _stored_text(*run_ids) -> str:
    parts = []
    for run_id in run_ids:
        run = Run.objects.get(pk=run_id)
        parts.append(run.error + json.dumps(run.params))
        parts += [e.message + json.dumps(e.data) for e in RunEvent.objects.filter(run_id=run_id)]
        parts += [s.message + json.dumps(s.output) for s in RunStep.objects.filter(run_id=run_id)]
    return "\n".join(parts)


def _forms(secret: str) -> list[str]:
    """The secret and the base64 spellings a file or row could carry it in."""
    encoded = base64.b64encode(secret.encode()).decode()
    return [secret, encoded[:40], base64.urlsafe_b64encode(secret.encode()).decode()[:40]]


def _work_dir_text(provisioning: Provisioning) -> str:
    """Every file of a Terraform work directory as a step sees it (init against the state, outputs read)."""
    with runner_for(provisioning) as tf:
        tf.init()
        tf.output()
        files = [p for p in Path(tf.workdir).rglob("*") if p.is_file() and "providers" not in p.parts]
        return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def test_provisioning_mints_the_credential_outside_terraform_and_re_runs_reuse_it(
    api, worker, cp, bootstrap, cloud_module
):
    created = api.post(
        "/credentials",
        {
            "name": "aws-mint",
            "provider": "aws",
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    response = api.post(
        "/clusters/provision",
        {
            "name": "minted",
            "provider": "aws",
            "region": "us-east-1",
            "node_pools": NODE_POOLS,
            "credential_id": created.json()["id"],
            "auto_approve": True,
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    run_id, cluster_id = response.json()["run_id"], response.json()["cluster_id"]
    schema = f"tf_cluster_{cluster_id}"
    try:
        run = _finished(run_id)
        assert run.status == RunStatus.SUCCEEDED, (run.error, list(run.steps.values_list("name", "message")))
        cluster = Cluster.objects.get(pk=cluster_id)
        assert cluster.status == ClusterStatus.AVAILABLE
        provisioning = Provisioning.objects.get(cluster=cluster)
        assert provisioning.status == ProvisioningStatus.PROVISIONED
        assert provisioning.outputs["cluster_endpoint"] == cp.url
        assert "kubeconfig" not in provisioning.outputs

        outputs_step = RunStep.objects.get(run_id=run_id, name="outputs")
        assert outputs_step.output["kubeconfig"] == "minted by the credential step"
        minted_step = RunStep.objects.get(run_id=run_id, name="credential")
        assert minted_step.status == StepStatus.SUCCEEDED
        (secret_name,) = _token_secrets(cp)
        assert secret_name.startswith("budcluster-token-")
        secret = client.CoreV1Api(cp.client()).read_namespaced_secret(secret_name, "kube-system")
        created_at = secret.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert minted_step.output == {
            "service_account": "kube-system/budcluster",
            "cluster_role": "cluster-admin",
            "binding": "budcluster-cluster-admin",
            "secret": f"kube-system/{secret_name}",
            "secret_created": created_at,
            "minted": True,
            "registration_run": str(provisioning.registration_run_id),
        }

        # The registered kubeconfig authenticates as the minted service account, not as the cloud identity.
        token = _token(cluster)
        assert token != bootstrap
        assert _whoami(cluster) == "system:serviceaccount:kube-system:budcluster"
        with psycopg.connect(state_url()) as conn:
            (raw,) = conn.execute(
                "SELECT kubeconfig FROM clusters_cluster WHERE id = %s", [cluster_id]
            ).fetchone()
        assert token not in raw  # stored encrypted

        # Neither token is in the Terraform state, in a Terraform work directory, or in anything stored
        # about the runs (events, step outputs and messages).
        state = "\n".join(data for _, data in state_rows(schema))
        assert '"null_resource"' in state
        work_dir = _work_dir_text(provisioning)
        stored = _stored_text(run_id, provisioning.registration_run_id)
        for value in (token, bootstrap):
            for form in _forms(value):
                assert form not in state and form not in work_dir and form not in stored

        # The step again (a crash after the Secret was made, a redelivered message): same Secret, same token.
        again = cloud_auth.mint_for(provisioning)
        assert again.summary() == {k: v for k, v in minted_step.output.items() if k in again.summary()}
        assert yaml.safe_load(again.kubeconfig)["users"][0]["user"]["token"] == token
        assert _token_secrets(cp) == [secret_name]

        # Rotation: deleting the Secret revokes the token at once; renew mints a new one and registers it.
        client.CoreV1Api(cp.client()).delete_namespaced_secret(secret_name, "kube-system")
        wait_for(lambda: _refused(cluster), timeout=30, what="the API server to refuse the revoked token")
        registration = cloud_auth.renew(provisioning)
        assert _finished(registration.pk).status == RunStatus.SUCCEEDED
        rotated = _token(cluster)
        assert rotated != token
        assert _whoami(cluster) == "system:serviceaccount:kube-system:budcluster"
        (renewed,) = _token_secrets(cp)
        assert renewed != secret_name
        # The revoked token stays revoked: nothing re-created it.
        revoked = yaml.safe_load(Cluster.objects.get(pk=cluster_id).kubeconfig)
        revoked["users"][0]["user"]["token"] = token
        with pytest.raises(Unauthorized), ClusterGateway(revoked, reuse=False) as gw:
            gw.version()
    finally:
        drop_schema(schema)


def test_an_endpoint_the_guard_refuses_fails_the_run_with_a_clear_message(api, worker, dc, settings):
    """A module output is cloud input like any other: an endpoint at the metadata address is never contacted."""
    settings.PROVISIONING_MODULE_OVERRIDE = "terraform/testing/cloud-cluster"
    settings.PROVISIONING_MODULE_VARIABLES = {
        "api_server": "https://169.254.169.254",
        "ca_data": base64.b64encode(dc.ca_pem).decode(),
        "bootstrap_token": dc.token(dc.names[2]),
    }
    created = api.post(
        "/credentials",
        {
            "name": "aws-guard",
            "provider": "aws",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        format="json",
    )
    response = api.post(
        "/clusters/provision",
        {
            "name": "guarded",
            "provider": "aws",
            "region": "us-east-1",
            "node_pools": NODE_POOLS,
            "credential_id": created.json()["id"],
            "auto_approve": True,
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    run_id, cluster_id = response.json()["run_id"], response.json()["cluster_id"]
    try:
        run = _finished(run_id, timeout=120)
        assert run.status == RunStatus.FAILED
        step = RunStep.objects.get(run_id=run_id, name="credential")
        assert step.status == StepStatus.FAILED
        assert step.message.startswith(
            "cannot make the cluster's credential: the cluster endpoint from the module"
        )
        assert "169.254.169.254" in step.message
        cluster = Cluster.objects.get(pk=cluster_id)
        assert cluster.status == ClusterStatus.ERROR and not cluster.kubeconfig
        assert Provisioning.objects.get(cluster=cluster).status == ProvisioningStatus.FAILED
        stored = _stored_text(run_id)
        assert dc.token(dc.names[2]) not in stored and SECRET_KEY not in stored
    finally:
        drop_schema(f"tf_cluster_{cluster_id}")


def test_one_attempt_on_a_cluster_without_token_controller_waits_and_never_duplicates(dc):
    """The devcluster has no token controller: an attempt creates the objects and waits for the token; another
    attempt applies the same objects again (no AlreadyExists, no second Secret)."""
    name = dc.names[0]
    server = dc.cluster_url(name)
    ca = base64.b64encode(dc.ca_pem).decode()
    for _ in range(2):
        with pytest.raises(cloud_auth.NotReady, match="waiting for the token controller to fill Secret"):
            cloud_auth.mint(server=server, ca_data=ca, bootstrap=dc.token(name), cluster_name=name)
    kube = client.CoreV1Api(_kube(dc, name))
    secrets = [
        s
        for s in kube.list_namespaced_secret("kube-system").items
        if s.metadata.name.startswith("budcluster")
    ]
    assert len(secrets) == 1 and secrets[0].metadata.name.startswith("budcluster-token-")
    assert secrets[0].type == cloud_auth.TOKEN_SECRET_TYPE
    assert secrets[0].metadata.annotations[cloud_auth.SA_NAME_ANNOTATION] == "budcluster"
    assert (
        kube.read_namespaced_service_account("budcluster", "kube-system").metadata.labels == cloud_auth.LABELS
    )
    binding = client.RbacAuthorizationV1Api(_kube(dc, name)).read_cluster_role_binding(
        "budcluster-cluster-admin"
    )
    assert binding.role_ref.name == "cluster-admin"
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", "budcluster", "kube-system")
    ]


def test_a_namespace_of_its_own_is_created(dc):
    name = dc.names[2]
    account = cloud_auth.Account(namespace="budcluster-credential", name="bud", cluster_role="view")
    with pytest.raises(cloud_auth.NotReady, match="fill Secret budcluster-credential/bud-token-"):
        cloud_auth.mint(
            server=dc.cluster_url(name),
            ca_data=base64.b64encode(dc.ca_pem).decode(),
            bootstrap=dc.token(name),
            cluster_name=name,
            account=account,
        )
    kube = client.CoreV1Api(_kube(dc, name))
    assert cloud_auth.LABELS.items() <= kube.read_namespace("budcluster-credential").metadata.labels.items()
    assert kube.read_namespaced_service_account("bud", "budcluster-credential")
    binding = client.RbacAuthorizationV1Api(_kube(dc, name)).read_cluster_role_binding("bud-view")
    assert binding.role_ref.name == "view"


def test_refusals_are_clear_and_carry_no_token(dc):
    name = dc.names[1]
    ca = base64.b64encode(dc.ca_pem).decode()
    wrong = "not-the-cluster-token-0123456789abcdef"
    with pytest.raises(cloud_auth.NotReady) as waiting:
        cloud_auth.mint(server=dc.cluster_url(name), ca_data=ca, bootstrap=wrong, cluster_name=name)
    assert "does not accept the cloud identity" in str(waiting.value) and wrong not in str(waiting.value)
    # An endpoint the outbound-address guard refuses is final, whatever token comes with it.
    with pytest.raises(cloud_auth.CredentialRefused, match="endpoint from the module's outputs was refused"):
        cloud_auth.mint(server="https://169.254.169.254", ca_data=ca, bootstrap=wrong, cluster_name=name)


def _kube(dc, name: str):
    from devcluster.testing import kube_client

    return kube_client(dc, name)
