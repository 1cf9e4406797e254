"""Free GPU counts follow a deployment's pods as soon as they are bound to nodes (and released when they go), not at
the next inventory refresh: the read of the pods the deploy run and the health check make already knows where they
landed, and the nodes concerned are read again then (``hardware.services.refresh_nodes``)."""

from __future__ import annotations

import pytest
from kubernetes import client

from clusters import services as cluster_services
from clusters.choices import ClusterStatus
from clusters.models import Cluster
from deployments import health
from deployments.charts import DEPLOYMENT_LABEL
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from devcluster.testing import devcluster_fixture, kube_client
from hardware.models import Node
from hardware.services import refresh_inventory
from tests.worker import wait_for

gpus = devcluster_fixture(name="gpus", nodes="small-gpu", scope="module")

pytestmark = pytest.mark.django_db

NAMESPACE = "bud-llama-0a1b2c3d"


def _pod(name: str, node: str, deployment: Deployment, gpus_wanted: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {DEPLOYMENT_LABEL: str(deployment.pk)}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "engine",
                    "image": "vllm/vllm-openai:v0.6.3",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus_wanted)}},
                }
            ],
        },
    }


def test_free_gpus_count_a_deployment_as_soon_as_its_pods_are_bound(api, gpus, settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    checked = cluster_services.validate(gpus.kubeconfig_yaml(gpus.names[0]).encode())
    cluster = Cluster.objects.create(
        name="dev",
        server_url=checked.server,
        kubeconfig=checked.normalized_yaml(),
        status=ClusterStatus.AVAILABLE,
    )
    with cluster_services.gateway_for(cluster, reuse=False) as gw:
        refresh_inventory(cluster, gw)

    def free_gpus() -> int:
        return api.get(f"/clusters/{cluster.pk}").json()["summary"]["free_gpus"]

    def free_on(node: str) -> int:
        return Node.objects.get(cluster=cluster, name=node).free_accelerators

    before, h100_before = free_gpus(), free_on("gpu-h100-0")
    assert h100_before == 8
    deployment = Deployment.objects.create(
        name="llama", cluster=cluster, namespace=NAMESPACE, status=DeploymentStatus.DEPLOYING, replicas=2
    )
    core = client.CoreV1Api(kube_client(gpus, gpus.names[0]))
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_pod(NAMESPACE, _pod("llama-0", "gpu-h100-0", deployment, 4))
    core.create_namespaced_pod(NAMESPACE, _pod("llama-1", "gpu-h100-1", deployment, 2))

    # What the deploy run's wait step (and the health check) does: read the pods. Nothing else is refreshed.
    with cluster_services.gateway_for(cluster, reuse=False) as gw:
        health.readiness(gw, deployment)
    assert free_on("gpu-h100-0") == 4 and free_on("gpu-h100-1") == 6
    assert free_gpus() == before - 6
    device_info = api.get(f"/clusters/{cluster.pk}/device-info").json()["nodes"]
    assert {n["node"]: n["devices"][0]["free"] for n in device_info if n["node"].startswith("gpu-h100")} == {
        "gpu-h100-0": 4,
        "gpu-h100-1": 6,
    }

    # A pod that goes gives its GPUs back at the next read of the pods.
    core.delete_namespaced_pod("llama-1", NAMESPACE, grace_period_seconds=0)
    wait_for(lambda: len(core.list_namespaced_pod(NAMESPACE).items) == 1, timeout=30, what="pod llama-1 gone")
    with cluster_services.gateway_for(cluster, reuse=False) as gw:
        health.readiness(gw, deployment)
    assert free_on("gpu-h100-1") == 6 + 2 and free_gpus() == before - 4
