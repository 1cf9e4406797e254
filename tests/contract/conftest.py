"""Fixtures of the API contract tests: one object of every kind the API serves (``seeded``), the OpenAPI schema as
schemathesis reads it (``openapi``), and the path of every operation filled in with those objects' ids.

The cluster's kubeconfig points at a loopback port nothing listens on: calls to the cluster (live health, worker
logs) fail at once with "connection refused", which is what an unreachable cluster answers.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from clusters import services as cluster_services
from clusters.choices import ClusterStatus, ReleaseStatus
from clusters.models import Cluster, ClusterEvent, Release, Revision
from core import events
from core.choices import RunStatus
from core.models import Run
from deployments.choices import BenchmarkStatus, DeploymentStatus, WorkerPhase
from deployments.models import Benchmark, Deployment, DeploymentEvent, Worker
from hardware.models import Node
from provisioning import services as provisioning_services
from tests.api.conftest import _broker_at, free_port
from tests.kubeconfig.test_validate import with_server
from webhooks.models import Delivery, Subscription
from webhooks.services import new_secret

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSEED00SECRET"


@dataclass
class Seeded:
    cluster: Cluster
    deployment: Deployment
    worker: Worker
    run: Run
    benchmark: Benchmark
    credential_id: int
    event_id: str = ""
    webhook_id: int = 0
    delivery_id: int = 0

    def path_parameters(self, template: str) -> dict[str, str]:
        """Every parameter of ``template`` (an OpenAPI path) filled in with a seeded object's id."""
        resource = template.strip("/").split("/")[0]
        ids = {
            "clusters": self.cluster.pk,
            "deployments": self.deployment.pk,
            "benchmarks": self.benchmark.pk,
            "credentials": self.credential_id,
            "runs": self.run.pk,
            "events": self.event_id,
            "webhooks": self.webhook_id,
            "audit": AuditEntry.objects.values_list("pk", flat=True).first(),
        }
        values = {
            "id": ids.get(resource),
            "worker_id": self.worker.pk,
            "kind": "ttft",
            "fmt": "png",
            "delivery_id": self.delivery_id,
        }
        return {name: str(values[name]) for name in re.findall(r"{(\w+)}", template)}

    def path(self, template: str) -> str:
        parameters = self.path_parameters(template)
        return re.sub(r"{(\w+)}", lambda m: parameters[m.group(1)], template)


def gpu_node(cluster: Cluster, name: str, *, free: int = 8, ready: bool = True) -> Node:
    return Node.objects.create(
        cluster=cluster, name=name, ready=ready, schedulable=True, accelerator_type="cuda",
        accelerator_vendor="NVIDIA", accelerator_model="NVIDIA-H100-80GB-HBM3", accelerator_resource="nvidia.com/gpu",
        accelerator_count=8, accelerator_memory_mib=81559, free_accelerators=free, cpu_cores=96,
        free_cpu_millicores=90000, memory_bytes=1024**4, free_memory_bytes=1000 * 1024**3,
        allocatable={"accelerators": 8, "cpu_millicores": 95000, "memory_bytes": 1024**4},
    )  # fmt: skip


def unreachable_cluster(name: str, status: str = ClusterStatus.AVAILABLE) -> Cluster:
    checked = cluster_services.validate(with_server(f"https://127.0.0.1:{free_port()}").encode())
    return Cluster.objects.create(
        name=name, server_url=checked.server, kubeconfig=checked.normalized_yaml(), status=status
    )


def running_deployment(cluster: Cluster, name: str = "d1") -> Deployment:
    release = Release.objects.create(
        cluster=cluster, name=name, namespace=f"bud-{name}-0a1b2c3d", chart="bud_runtime_container",
        status=ReleaseStatus.DEPLOYED, current_revision=1,
    )  # fmt: skip
    Revision.objects.create(
        release=release, number=1, values={"replicas": 1}, manifest="", description="install"
    )
    return Deployment.objects.create(
        name=name, cluster=cluster, namespace=release.namespace, model_name="llama-3.1-8b-instruct",
        status=DeploymentStatus.RUNNING, release=release, replicas=1, ready_replicas=1,
        endpoint_url="http://203.0.113.10",
    )  # fmt: skip


@pytest.fixture
def loopback(settings):
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    settings.CLUSTER_LIVE_CHECK_DEADLINE = 5.0


@pytest.fixture
def seeded(loopback, admin_user) -> Seeded:
    cluster = unreachable_cluster("c1")
    gpu_node(cluster, "gpu-h100-0")
    for old, new in (("", "registering"), ("registering", "available"), ("available", "not_available")):
        ClusterEvent.objects.create(
            cluster=cluster, kind="status", old_status=old, new_status=new, message=new
        )
    deployment = running_deployment(cluster)
    worker = Worker.objects.create(
        deployment=deployment, name="d1-runtime-0", node="gpu-h100-0", device="1x nvidia.com/gpu",
        phase=WorkerPhase.RUNNING, ready=True,
    )  # fmt: skip
    Worker.objects.create(deployment=deployment, name="d1-runtime-1", node="", phase=WorkerPhase.PENDING)
    DeploymentEvent.objects.create(
        deployment=deployment, kind="deploy", new_status="running", message="ready"
    )
    now = timezone.now()
    run = Run.objects.create(
        id=uuid.uuid4(), kind="deployment.deploy", title="Deploy d1", subject=deployment,
        status=RunStatus.SUCCEEDED, created_by=admin_user, started_at=now - timedelta(minutes=5), finished_at=now,
    )  # fmt: skip
    benchmark = Benchmark.objects.create(deployment=deployment, status=BenchmarkStatus.SUCCEEDED, run=run)
    credential = provisioning_services.create_credential(
        name="aws-1", provider="aws", region="us-east-1",
        secret={"access_key_id": "AKIAOLDOLDOLDOLD", "secret_access_key": SECRET_KEY},
    )  # fmt: skip
    AuditEntry.objects.create(
        source="api", action="cluster.update", actor_name="admin", object_type="clusters.cluster",
        object_id=str(cluster.pk), object_repr=cluster.name, changes={"labels": [{}, {"team": "ml"}]},
    )  # fmt: skip
    event = events.emit("run.succeeded", f"runs/{run.pk}", {"run": str(run.pk)})
    events.position_pending()
    event.refresh_from_db()
    hook = Subscription.objects.create(
        name="hook-1", url="https://hooks.example.com/in", event_types=["io.bud.run.*"], secret=new_secret()
    )
    delivery = Delivery.objects.create(
        subscription=hook, event=event, position=event.position, subject=event.subject
    )
    return Seeded(
        cluster, deployment, worker, run, benchmark, credential.pk, str(event.id), hook.pk, delivery.pk
    )


@pytest.fixture
def openapi(api, settings):
    """The API's OpenAPI schema as schemathesis reads it, and the token header its cases are sent with. Runs the
    cases start go to an in-memory broker."""
    import schemathesis

    from budcluster_site.wsgi import application

    settings.API_THROTTLE_USER_RATE = ""
    token = {"Authorization": api._credentials["HTTP_AUTHORIZATION"]}
    with _broker_at("memory://"):
        yield schemathesis.openapi.from_wsgi("/schema", application, headers=token), token
