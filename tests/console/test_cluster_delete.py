"""Deleting a cluster from the admin runs the deletion workflow (issue "The operators' console and the API
contract", item 1): the confirmation page lists what leaves the cluster (collectors, BudCluster's namespace and
RBAC, the deployments on it) and offers the API's ``force``; confirming starts ``services.request_delete``'s run
and opens it, and the collectors and RBAC are gone from the cluster afterwards. A real worker and a devcluster."""

from __future__ import annotations

import pytest
from django.utils import timezone

from clusters import services
from clusters.models import Cluster, Release
from core.choices import RunStatus
from core.gateway import ClusterGateway
from core.models import Run
from deployments.models import Deployment
from devcluster.testing import devcluster_fixture
from provisioning.models import CloudCredential, Provisioning
from tests.worker import run_finished

dc = devcluster_fixture(name="dc", nodes="cpu-small", scope="module")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


def _installed(gw: ClusterGateway, namespaces: set[str]) -> list[str]:
    """BudCluster's objects still on the cluster: the collectors' DaemonSets and its ClusterRole."""
    found = [
        f"{ns}/{d['metadata']['name']}" for ns in namespaces for d in gw.list("apps/v1", "DaemonSet", ns)
    ]
    if gw.get_or_none("rbac.authorization.k8s.io/v1", "ClusterRole", "budcluster") is not None:
        found.append("ClusterRole/budcluster")
    return found


def test_the_delete_button_removes_collectors_and_rbac_from_the_cluster(api, worker, dc, client, admin_user):
    response = api.post(
        "/clusters/register", {"name": "console", "kubeconfig": dc.kubeconfig_yaml()}, format="json"
    )
    assert response.status_code == 202, response.json()
    assert run_finished(response.json()["run_id"], 90).status == RunStatus.SUCCEEDED
    cluster = Cluster.objects.get(name="console")
    releases = list(Release.objects.filter(cluster=cluster).values_list("namespace", "name"))
    namespaces = {ns for ns, _ in releases}
    with ClusterGateway(dc.kubeconfig()) as gw:
        before = _installed(gw, namespaces)
    assert "ClusterRole/budcluster" in before and len(before) > 1, before  # RBAC and the collectors
    client.force_login(admin_user)
    url = f"/admin/clusters/cluster/{cluster.pk}/delete/"

    page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    for namespace, name in releases:
        assert f"release {namespace}/{name} " in text
    assert "bud-system" in text and "RBAC" in text
    assert 'name="force"' in text  # the API's force=true, as a choice
    assert Cluster.objects.get(pk=cluster.pk).status == "available"  # looking starts nothing

    confirmed = client.post(url, {"post": "yes"})
    run = Run.objects.get(kind="cluster.delete", subject_id=str(cluster.pk))
    assert confirmed.status_code == 302 and confirmed["Location"] == f"/admin/core/run/{run.pk}/change/"
    assert run_finished(run.pk, 90).status == RunStatus.SUCCEEDED, Run.objects.get(pk=run.pk).error
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    with ClusterGateway(dc.kubeconfig()) as gw:
        assert _installed(gw, namespaces) == []


def test_active_deployments_refuse_deletion_unless_forced(admin_client, monkeypatch):
    cluster = Cluster.objects.create(name="busy", status="available", server_url="https://k8s.example")
    Deployment.objects.create(
        name="llama", cluster=cluster, namespace="bud-llama-0a1b2c3d", model_name="llama", status="running"
    )
    url = f"/admin/clusters/cluster/{cluster.pk}/delete/"
    page = admin_client.get(url).content.decode()
    assert "deployment llama" in page and "bud-llama-0a1b2c3d" in page

    # The API's refusal, on the page: nothing starts and the cluster keeps its status.
    refused = admin_client.post(url, {"post": "yes"})
    assert refused.status_code == 409
    assert "1 active deployment(s)" in refused.content.decode()
    assert Cluster.objects.get(pk=cluster.pk).status == "available"
    assert not Run.objects.exists()

    # Forced, the same service is called with force=True (recorded here: no worker needed to see that).
    calls = []

    def record(obj, *, force=False, user=None):
        calls.append((obj.pk, force, user.username))
        return Run.objects.create(kind="cluster.delete", title="Delete cluster", subject_id=str(obj.pk))

    monkeypatch.setattr(services, "request_delete", record)
    forced = admin_client.post(url, {"post": "yes", "force": "on"})
    assert calls == [(cluster.pk, True, "admin")]
    assert forced.status_code == 302 and forced["Location"].startswith("/admin/core/run/")


def test_a_provisioned_clusters_page_names_the_cloud_resources_it_destroys(admin_client):
    cluster = Cluster.objects.create(name="eks-1", status="available", server_url="https://eks.example")
    credential = CloudCredential.objects.create(name="aws", provider="aws", secret={"access_key_id": "A"})
    Provisioning.objects.create(
        cluster=cluster, provider="aws", region="eu-west-1", kubernetes_version="1.31", credential=credential,
        module="terraform/modules/aws-eks", backend="pg", state_name="tf_eks_1", applied_at=timezone.now(),
    )  # fmt: skip
    page = admin_client.get(f"/admin/clusters/cluster/{cluster.pk}/delete/").content.decode()
    assert "the AWS (EKS) cluster in eu-west-1" in page and "terraform destroy" in page
