"""Every write BudCluster makes is strict server-side apply, checked on a real API server.

What a user notices: a chart or object with a field Kubernetes does not know is refused with the field's name
(instead of being deployed without it), re-running a step that applies objects changes nothing on the cluster
(not even resourceVersion, so nothing restarts and no watcher wakes), and every field BudCluster set is owned by
the field manager `budcluster` through Apply, so a later apply can remove what an earlier revision added.

The charts are rendered with the values the service computes and installed with
`clusters.releases.install_or_upgrade`, the function the workflows call, in registration order: the collectors
first (the collector workflow's values), then — once feature discovery has labelled the nodes and the inventory is
read — the runtime and transfer charts with values from placement on that inventory (see `workload_installs`).
These tests get their own `gpu-mixed` control plane: they install cluster-scoped objects (CRDs, ClusterRoles) and
their collectors label the nodes, which other tests on the session cluster must not inherit.
"""

from __future__ import annotations

import pytest

from clusters import releases
from clusters import services as cluster_services
from clusters.models import Cluster
from core.gateway import FIELD_MANAGER, ClusterGateway, Invalid
from deployments import charts
from deployments import services as deploy_services
from deployments.choices import ModelSource
from devcluster.real.testing import real_cluster_fixture
from hardware.services import refresh_inventory
from hardware.workflows import COLLECTOR_CHART
from tests.worker import wait_for

strict_fixture = real_cluster_fixture(name="strict_cluster", nodes="gpu-mixed", scope="module")
# All transactional database tests (the chart test reads the inventory repeatedly, and the inventory's bulk
# upsert needs a real commit between reads), so pytest-django, which runs non-database, database and
# transactional tests in separate groups, keeps the module's tests together and its control plane starts once.
pytestmark = pytest.mark.django_db(transaction=True)

LLAMA_8B = {"model": "llama-3.1-8b-instruct", "context_len": 4096, "concurrency": 8}


def gateway(cp) -> ClusterGateway:
    return ClusterGateway(cp.kubeconfig("admin"), allow_loopback=True, timeout=30)


def deployment(name: str, namespace: str, **container_extra) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "busybox:1.36", **container_extra}]},
            },
        },
    }


@pytest.fixture
def namespace(strict_cluster):
    """A fresh namespace per test, applied through the gateway."""

    def make(name: str) -> str:
        with gateway(strict_cluster) as gw:
            gw.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    return make


def test_an_unknown_field_is_refused_by_name_and_nothing_is_written(strict_cluster, namespace):
    ns = namespace("strict-unknown")
    typo = deployment("web", ns, imagePullPolcy="Always")  # sic: the typo a chart author makes
    with gateway(strict_cluster) as gw:
        with pytest.raises(Invalid) as err:  # typed: a step fails at once instead of retrying a broken object
            gw.apply(typo)
        message = str(err.value)
        assert 'containers[name="app"].imagePullPolcy: field not declared in schema' in message
        assert "/namespaces/strict-unknown/deployments/web" in message
        assert gw.get_or_none("apps/v1", "Deployment", "web", ns) is None  # nothing was created

        # On an existing object the refused apply changes nothing either (no partial write).
        good = gw.apply(deployment("web", ns, imagePullPolicy="IfNotPresent"))
        with pytest.raises(Invalid, match=r"\.spec\.replicaz"):
            gw.apply({**deployment("web", ns), "spec": {**deployment("web", ns)["spec"], "replicaz": 3}})
        after = gw.get("apps/v1", "Deployment", "web", ns)
    # Not resourceVersion: the deployment controller writes the new object's status meanwhile. Any write to
    # the spec would raise the generation.
    assert after["metadata"]["generation"] == good["metadata"]["generation"]
    assert after["spec"] == good["spec"]
    assert after["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_applying_the_same_objects_twice_changes_nothing(strict_cluster, namespace):
    ns = namespace("strict-noop")
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": ns},
            "data": {"a": "1"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc", "namespace": ns},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 8000}]},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    ]
    with gateway(strict_cluster) as gw:
        sent = []
        send = gw.request
        gw.request = lambda method, path, **kw: sent.append((method, kw.get("params"))) or send(
            method, path, **kw
        )
        first = gw.apply_all(objects)
        gw.create_secret(ns, "token", {"token": "s3cr3t"})
        secret = gw.get("v1", "Secret", "token", ns)
        second = gw.apply_all(objects)
        gw.create_secret(ns, "token", {"token": "s3cr3t"})
        secret_again = gw.get("v1", "Secret", "token", ns)
        changed = gw.apply({**objects[0], "data": {"a": "2"}})
    assert [o["metadata"]["resourceVersion"] for o in second] == [
        o["metadata"]["resourceVersion"] for o in first
    ]
    assert secret_again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    # ...while a real change does write (the comparison above can fail).
    assert changed["metadata"]["resourceVersion"] != first[0]["metadata"]["resourceVersion"]
    patches = [params for method, params in sent if method == "PATCH"]
    assert len(patches) == 2 * len(objects) + 3
    assert all(p["fieldManager"] == FIELD_MANAGER and p["fieldValidation"] == "Strict" for p in patches)
    for obj in [*second, secret_again]:
        managers = [(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]]
        assert managers == [(FIELD_MANAGER, "Apply")], obj["metadata"]["name"]


# --- the charts BudCluster installs ------------------------------------------------------------------------------


@pytest.fixture
def cluster(strict_cluster, settings) -> Cluster:
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    checked = cluster_services.validate(strict_cluster.kubeconfig_yaml().encode())
    return Cluster.objects.create(
        name="strict-apply",
        server_url=checked.server,
        kubeconfig=checked.normalized_yaml(),
        status="available",
    )


# What the collector workflow installs (hardware.workflows.ensure_collectors with the default settings).
COLLECTORS = (COLLECTOR_CHART, "bud-node-info", "bud-system", {"namespace": "bud-system"})


def inventory_with_accelerators(cluster: Cluster, gw: ClusterGateway) -> list:
    """Read the inventory until GPU feature discovery (the collectors just installed) has described the memory
    of every NVIDIA GPU, as the collector workflow's wait step does before the inventory is read."""

    def described():
        refresh_inventory(cluster, gw)
        nodes = deploy_services.node_capacities(cluster)
        cuda = [n for n in nodes if n.accelerator_type == "cuda"]
        return nodes if cuda and all(n.device_memory_mib for n in cuda) else None

    return wait_for(described, timeout=90, interval=1.0, what="feature discovery to label the NVIDIA nodes")


S3 = {"source": ModelSource.S3, "s3": {"endpoint": "https://s3.example.com", "bucket": "models"}}


def workload_installs(nodes: list) -> list[tuple[str, str, str, dict]]:
    """(chart, release, namespace, values) of the runtime and transfer installs the deploy workflow makes, with the
    values the service computes from a placement on ``nodes``: CUDA from Hugging Face behind an ingress, CPU from
    S3, CUDA without transfer behind a LoadBalancer. The collectors do not describe AMD and Gaudi memory, so the
    placement engine refuses those nodes; their chart variants reuse the CUDA placement with the device type
    swapped, which is enough for what is checked here (the ROCm/HPU branches of the templates)."""
    installs = []
    variants = (
        ("cuda", "cuda", {"source": ModelSource.HF}),
        ("cpu", "cpu", S3),
        ("cuda-lb", "cuda", {"source": ModelSource.NONE, "service_type": "LoadBalancer"}),
        ("rocm", "cuda", {"source": ModelSource.NONE, "service_type": "ClusterIP"}),
        ("hpu", "cuda", {"source": ModelSource.NONE, "service_type": "ClusterIP"}),
    )
    for name, placed_on, extra in variants:
        config = {**LLAMA_8B, "device_type": placed_on, **extra}
        result = deploy_services.place(config, nodes)
        runtime = deploy_services.placement_record(result)["runtime"]
        assert runtime["device_type"] == placed_on
        if name in ("rocm", "hpu"):
            runtime = {**runtime, "device_type": name}
        ns = f"strict-{name}"
        runtime_values = charts.runtime_chart_values(
            deployment_id=ns,
            config=config,
            runtime=runtime,
            replicas=result.replicas,
            engine_args=["--enable-prefix-caching"],
            image="",
            has_hf_secret=True,
            ingress_host=f"{ns}.apps.example.com" if name == "cuda" else "",
        )
        installs.append((charts.RUNTIME_CHART, f"{ns}-runtime", ns, runtime_values))
        if config["source"] != ModelSource.NONE:
            transfer_values = charts.transfer_chart_values(
                config, runtime, result.estimate.weights_bytes, has_secret=True
            )
            installs.append((charts.TRANSFER_CHART, charts.TRANSFER_RELEASE, ns, transfer_values))
    return installs


def snapshot(gw: ClusterGateway, refs: list[dict]) -> dict[tuple, dict]:
    out = {}
    for ref in refs:
        obj = gw.get(ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
        out[(ref["kind"], ref.get("namespace"), ref["name"])] = obj
    return out


def versions(objs: dict[tuple, dict]) -> dict[tuple, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in objs.items()}


def test_the_charts_apply_strictly_and_a_second_apply_changes_nothing(cluster, namespace):
    with cluster_services.gateway_for(cluster, timeout=30, reuse=False) as gw:

        def install(chart: str, release: str, ns: str, values: dict):
            return releases.install_or_upgrade(
                gw, cluster, chart=chart, release=release, namespace=ns, values=values
            )

        # Registration order: collectors, then (after feature discovery) the workloads placed on the inventory.
        revisions = [install(*COLLECTORS)]
        installs = workload_installs(inventory_with_accelerators(cluster, gw))
        for ns in sorted({ns for _, _, ns, _ in installs}):
            namespace(ns)  # the deploy workflow creates the namespace before installing
        revisions += [install(*args) for args in installs]
        installs.insert(0, COLLECTORS)
        refs = [ref for revision in revisions for ref in revision.applied]
        kinds = {ref["kind"] for ref in refs}
        assert kinds >= {
            "Namespace", "CustomResourceDefinition", "ServiceAccount", "ConfigMap", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding", "DaemonSet", "Deployment", "Service", "Ingress",
            "PersistentVolumeClaim", "Job",
        }  # fmt: skip

        # Controllers (DaemonSet, Deployment, Job, PVC binding, CRD establishment) write status after the first
        # apply; wait until the objects stop changing so that the comparison measures our second apply only.
        seen: list[dict] = []

        def settled() -> bool:
            seen.append(versions(snapshot(gw, refs)))
            return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

        wait_for(settled, timeout=90, interval=1.0, what="the installed objects to stop changing")
        before = seen[-1]

        applied: list[dict] = []
        send = gw.request

        def request(method: str, path: str, **kwargs):
            body = send(method, path, **kwargs)
            if method == "PATCH":
                applied.append(body)
            return body

        gw.request = request
        for args in installs:
            install(*args)
        gw.request = send
        after = snapshot(gw, refs)

    # Every object was applied again, and none of them changed.
    assert len(applied) == len(refs)
    by_key = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in applied}
    assert versions(by_key) == before
    assert versions(after) == before
    # Every object is owned by budcluster through Apply, and budcluster never wrote with Update.
    for key, obj in after.items():
        managers = {(m["manager"], m["operation"]) for m in obj["metadata"].get("managedFields") or []}
        assert (FIELD_MANAGER, "Apply") in managers, (key, managers)
        assert (FIELD_MANAGER, "Update") not in managers, (key, managers)
