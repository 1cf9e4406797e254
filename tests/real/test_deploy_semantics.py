"""Deploying where Kubernetes semantics decide: the real scheduler, Pod Security admission, the namespace
controller with its finalizers, and a worker killed mid-install, on the real control plane."""

from __future__ import annotations

import pytest
from kubernetes import client

from clusters.models import Release, Revision
from clusters.services import gateway_for
from core.choices import RunStatus, StepStatus
from core.models import Run
from deployments.models import Deployment
from tests.conftest import WORKER_ENV
from tests.worker import WorkerProcess, kill_worker_during_step, wait_for

from .test_lifecycle import finished, succeeded

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}
ACCELERATORS = ("nvidia.com/", "amd.com/gpu", "habana.ai/gaudi")


def _deploy(api, cluster, name: str, **extra) -> tuple[Deployment, str]:
    response = api.post(
        "/deployments/deploy", {"cluster": cluster.pk, "name": name, **SMALL, **extra}, format="json"
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    return Deployment.objects.get(pk=body["deployment_id"]), body["run_id"]


def _step_reached(run_id: str, step: str, status: str = StepStatus.SUCCEEDED, timeout: float = 60) -> None:
    run = Run.objects.get(pk=run_id)
    wait_for(
        lambda: run.steps.filter(name=step, status=status).exists(), timeout=timeout, what=f"{step} {status}"
    )


def _delete(api, deployment: Deployment) -> None:
    response = api.delete(f"/deployments/{deployment.pk}?force=true")
    if response.status_code == 202:
        finished(response.json()["run_id"])


def _objects(cp, namespace: str) -> dict[str, list[str]]:
    api = cp.client()
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    return {
        "Deployment": sorted(d.metadata.name for d in apps.list_namespaced_deployment(namespace).items),
        "ReplicaSet": sorted(r.metadata.name for r in apps.list_namespaced_replica_set(namespace).items),
        "Service": sorted(s.metadata.name for s in core.list_namespaced_service(namespace).items),
        "Job": sorted(j.metadata.name for j in batch.list_namespaced_job(namespace).items),
        "Pod": sorted(p.metadata.name for p in core.list_namespaced_pod(namespace).items),
        "PersistentVolumeClaim": sorted(
            p.metadata.name for p in core.list_namespaced_persistent_volume_claim(namespace).items
        ),
    }


def test_the_plan_s_node_is_where_the_pod_lands(api, registered, real_cluster):
    deployment, run_id = _deploy(api, registered, "landing")
    run = finished(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    deployment.refresh_from_db()
    chosen = set(deployment.placement["candidate"]["nodes"])
    pods = client.CoreV1Api(real_cluster.client()).list_namespaced_pod(
        deployment.namespace, label_selector="app.kubernetes.io/name"
    )
    runtime = [p for p in pods.items if (p.metadata.owner_references or [{}])[0].kind != "Job"]
    assert runtime and {p.spec.node_name for p in runtime} <= chosen
    assert {w.node for w in deployment.workers.all()} <= chosen
    _delete(api, deployment)


def test_a_node_filled_after_planning_fails_with_the_scheduler_s_words(api, registered, real_cluster):
    core = client.CoreV1Api(real_cluster.client())
    deployment, run_id = _deploy(api, registered, "squeezed", ready_timeout=6)
    _step_reached(run_id, "place")
    deployment.refresh_from_db()
    chosen = deployment.placement["candidate"]["nodes"]
    # Another tenant takes every accelerator of the chosen nodes between planning and install.
    core.create_namespace({"metadata": {"name": "tenant"}})
    try:
        for i, node_name in enumerate(chosen):
            node = core.read_node(node_name)
            devices = {k: v for k, v in node.status.allocatable.items() if k.startswith(ACCELERATORS)}
            core.create_namespaced_pod(
                "tenant",
                {
                    "metadata": {"name": f"hog-{i}"},
                    "spec": {
                        "nodeName": node_name,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "hog", "image": "busybox", "resources": {"limits": devices}}],
                    },
                },
            )
        run = finished(run_id)
        assert run.status == RunStatus.FAILED
        message = run.steps.get(name="wait_ready").message
        # The scheduler's FailedScheduling event, verbatim, is in the step's message.
        events = core.list_namespaced_event(deployment.namespace, field_selector="reason=FailedScheduling")
        said = {e.message for e in events.items}
        assert said, "the scheduler reported nothing"
        assert any(m in message for m in said), (message, said)
        assert "Insufficient" in message
    finally:
        core.delete_namespace("tenant")
        _delete(api, deployment)


def test_a_pod_refused_by_pod_security_admission_is_reported_verbatim(
    api, registered, real_cluster, celery_worker_process
):
    celery_worker_process.stop()
    strict = WorkerProcess(
        name="restricted", extra_env={**WORKER_ENV, "DEPLOY_POD_SECURITY_LEVEL": "restricted"}
    ).start()
    try:
        deployment, run_id = _deploy(api, registered, "strict", ready_timeout=6, keep_on_failure=True)
        run = finished(run_id)
    finally:
        strict.stop()
        celery_worker_process.start()
    assert run.status == RunStatus.FAILED
    steps = dict(run.steps.values_list("name", "status"))
    # The transfer Job runs as non-root with no privilege: "restricted" admits it. vLLM runs as root: refused.
    assert steps["wait_transfer"] == "succeeded" and steps["wait_ready"] == "failed"
    deployment.refresh_from_db()
    apps = client.AppsV1Api(real_cluster.client())
    dep = apps.read_namespaced_deployment(deployment.name, deployment.namespace)
    failure = next(c for c in dep.status.conditions if c.type == "ReplicaFailure")
    assert 'violates PodSecurity "restricted:latest"' in failure.message
    assert failure.message in run.steps.get(name="wait_ready").message
    ns = client.CoreV1Api(real_cluster.client()).read_namespace(deployment.namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    _delete(api, deployment)


def test_cancel_mid_deploy_leaves_nothing_behind(api, registered, real_cluster):
    deployment, run_id = _deploy(api, registered, "cancelled")
    _step_reached(run_id, "transfer")
    assert api.post(f"/runs/{run_id}/cancel", {}, format="json").status_code == 202
    run = finished(run_id)
    assert run.status == RunStatus.CANCELLED
    assert dict(run.steps.values_list("name", "status"))["cleanup_resources"] == "succeeded"
    core = client.CoreV1Api(real_cluster.client())
    # The real namespace controller empties the namespace (finalizers included) before it goes.
    wait_for(
        lambda: deployment.namespace not in {n.metadata.name for n in core.list_namespace().items},
        timeout=60,
        what="the namespace to be gone",
    )
    assert not Release.objects.filter(namespace=deployment.namespace, status="deployed").exists()
    pvs = client.CoreV1Api(real_cluster.client()).list_persistent_volume().items
    assert not [
        pv for pv in pvs if (pv.spec.claim_ref and pv.spec.claim_ref.namespace == deployment.namespace)
    ]


def test_worker_killed_during_install_leaves_one_revision_and_no_duplicates(
    api, registered, real_cluster, celery_worker_process
):
    deployment, run = kill_worker_during_step(
        celery_worker_process, lambda: _deploy(api, registered, "killed"), "install", name="real",
        extra_env=WORKER_ENV, timeout=120,
    )  # fmt: skip
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.resumed_count >= 1
    objects = _objects(real_cluster, deployment.namespace)
    assert objects["Deployment"] == ["killed"] and objects["Service"] == ["killed"]
    assert objects["Job"] == ["model-transfer"] and objects["PersistentVolumeClaim"] == ["model-weights"]
    assert len(objects["ReplicaSet"]) == 1
    assert (
        Revision.objects.filter(release__namespace=deployment.namespace, release__name="killed").count() == 1
    )
    with gateway_for(registered) as gw:
        assert gw.get("apps/v1", "Deployment", "killed", deployment.namespace)["metadata"]["generation"] == 1
    succeeded(api.delete(f"/deployments/{deployment.pk}"))
