"""Workload controllers, collectors and storage against a running gpu-mixed devcluster."""

from __future__ import annotations

import pytest
from kubernetes import client

from devcluster.sim import hardware
from devcluster.sim.presets import HARDWARE_KEY, load_nodes, preset_names
from devcluster.sim.testing import wait_for

pytest_plugins = ["tests.devcluster.sim_fixtures"]

NFD_IMAGE = "registry.k8s.io/nfd/node-feature-discovery:v0.18.1"
GFD_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"


def deployment(name: str, replicas: int, image: str = "nginx:1.27", env: list | None = None) -> dict:
    container = {"name": "app", "image": image, "env": env or []}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        },
    }


def daemonset(name: str, image: str, command: list | None = None, **spec: object) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image, "command": command or []}], **spec},
            },
        },
    }


def job(name: str, env: list | None = None, labels: dict | None = None, backoff: int = 0) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "python:3.12-slim", "env": env or []}],
                },
            },
        },
    }


def job_condition(batch: client.BatchV1Api, ns: str, name: str) -> str | None:
    status = batch.read_namespaced_job_status(name, ns).status
    for c in status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type
    return None


# ------------------------------------------------------------------------------------------- deployments


def test_deployment_scales_from_one_to_three_ready_replicas(apps, core, ns):
    apps.create_namespaced_deployment(ns, deployment("web", 1))
    wait_for(lambda: apps.read_namespaced_deployment("web", ns).status.ready_replicas == 1)
    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
    dep = wait_for(lambda: (d := apps.read_namespaced_deployment("web", ns)).status.ready_replicas == 3 and d)
    assert dep.status.available_replicas == 3 and dep.status.updated_replicas == 3
    assert dep.status.observed_generation == dep.metadata.generation
    available = next(c for c in dep.status.conditions if c.type == "Available")
    assert available.status == "True"
    pods = core.list_namespaced_pod(ns, label_selector="app=web").items
    assert len(pods) == 3 and all(p.status.pod_ip.startswith("10.244.") for p in pods)
    rs = apps.list_namespaced_replica_set(ns).items
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].name == "web"
    assert all(p.metadata.owner_references[0].name == rs[0].metadata.name for p in pods)
    assert pods[0].metadata.labels["pod-template-hash"] == rs[0].metadata.labels["pod-template-hash"]


def test_deployment_rolls_out_a_template_change(apps, core, ns):
    apps.create_namespaced_deployment(ns, deployment("roll", 2))
    wait_for(lambda: apps.read_namespaced_deployment("roll", ns).status.ready_replicas == 2)
    apps.patch_namespaced_deployment(
        "roll", ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.28"}]}}}}
    )

    def rolled() -> bool:
        d = apps.read_namespaced_deployment("roll", ns)
        s = d.status
        return (
            s.observed_generation == d.metadata.generation
            and s.updated_replicas == 2
            and s.ready_replicas == 2
            and s.replicas == 2
        )

    wait_for(rolled)
    images = {
        p.spec.containers[0].image for p in core.list_namespaced_pod(ns).items if p.status.phase == "Running"
    }
    assert images == {"nginx:1.28"}
    sets = {
        r.spec.template.spec.containers[0].image: r.spec.replicas
        for r in apps.list_namespaced_replica_set(ns).items
    }
    assert sets == {"nginx:1.27": 0, "nginx:1.28": 2}
    revision = apps.read_namespaced_deployment("roll", ns).metadata.annotations[
        "deployment.kubernetes.io/revision"
    ]
    assert revision == "2"


def test_bad_image_and_crashing_container_show_their_reasons(apps, core, ns):
    pull = deployment("pull", 1, image="example.com/app:does-not-exist")
    pull["spec"]["progressDeadlineSeconds"] = 1
    apps.create_namespaced_deployment(ns, pull)
    apps.create_namespaced_deployment(
        ns, deployment("crash", 1, env=[{"name": "DEVCLUSTER_CRASH", "value": "1"}])
    )

    def waiting(app: str) -> tuple[str, int] | None:
        for p in core.list_namespaced_pod(ns, label_selector=f"app={app}").items:
            for cs in p.status.container_statuses or []:
                if cs.state.waiting and cs.state.waiting.reason not in ("ContainerCreating",):
                    return cs.state.waiting.reason, cs.restart_count
        return None

    assert wait_for(lambda: (w := waiting("pull")) and w[0] == "ImagePullBackOff" and w)
    reason, _ = wait_for(lambda: (w := waiting("crash")) and w[1] >= 2 and w)
    assert reason == "CrashLoopBackOff"
    reasons = {e.reason for e in core.list_namespaced_event(ns).items}
    assert {"BackOff", "Failed", "Scheduled", "Started"} <= reasons
    assert apps.read_namespaced_deployment("pull", ns).status.ready_replicas is None

    def progressing() -> str | None:
        conds = apps.read_namespaced_deployment("pull", ns).status.conditions or []
        return next((f"{c.status}/{c.reason}" for c in conds if c.type == "Progressing"), None)

    assert wait_for(lambda: progressing() == "False/ProgressDeadlineExceeded", timeout=5)


# ------------------------------------------------------------------------------------------- daemonsets


def test_daemonset_runs_one_pod_per_eligible_node(apps, core, ns):
    total = len(core.list_node().items)
    apps.create_namespaced_daemon_set(ns, daemonset("agent", "busybox:1.36"))
    tolerate = [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
    ]
    apps.create_namespaced_daemon_set(ns, daemonset("everywhere", "busybox:1.36", tolerations=tolerate))
    apps.create_namespaced_daemon_set(
        ns, daemonset("h100-only", "busybox:1.36", nodeSelector={"kubernetes.io/hostname": "gpu-h100-0"})
    )

    def settled(name: str, want: int) -> bool:
        s = apps.read_namespaced_daemon_set_status(name, ns).status
        return s.desired_number_scheduled == want and s.number_ready == want

    wait_for(lambda: settled("agent", total - 1))
    wait_for(lambda: settled("everywhere", total))
    wait_for(lambda: settled("h100-only", 1))
    nodes = [p.spec.node_name for p in core.list_namespaced_pod(ns, label_selector="app=agent").items]
    assert len(nodes) == len(set(nodes)) == total - 1 and "control-plane-0" not in nodes


def test_feature_labels_appear_only_after_collectors_run(gpu_cluster, apps, core, collector_ns):
    ns = collector_ns

    def labels(node: str) -> dict:
        return core.read_node(node).metadata.labels

    assert not any(k.startswith("feature.node.kubernetes.io/") for k in labels("cpu-xeon-spr-0"))
    assert "nvidia.com/gpu.product" not in labels("gpu-h100-0")
    # GFD only goes where NFD has found an NVIDIA PCI device, as in the upstream manifests.
    gfd_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "feature.node.kubernetes.io/pci-10de.present",
                                "operator": "In",
                                "values": ["true"],
                            }
                        ]
                    }
                ]
            }
        }
    }
    apps.create_namespaced_daemon_set(
        ns, daemonset("gfd", GFD_IMAGE, ["/usr/bin/gpu-feature-discovery"], affinity=gfd_affinity)
    )
    status = wait_for(
        lambda: (s := apps.read_namespaced_daemon_set_status("gfd", ns).status).observed_generation and s
    )
    assert status.desired_number_scheduled == 0
    apps.create_namespaced_daemon_set(ns, daemonset("nfd-worker", NFD_IMAGE, ["nfd-worker"]))
    spr = wait_for(
        lambda: (lb := labels("cpu-xeon-spr-0")).get("feature.node.kubernetes.io/cpu-cpuid.AMXBF16") and lb
    )
    assert spr["feature.node.kubernetes.io/cpu-model.vendor_id"] == "Intel"
    assert spr["feature.node.kubernetes.io/cpu-model.id"] == "143"
    assert spr["feature.node.kubernetes.io/cpu-hardware_multithreading"] == "true"
    assert spr["feature.node.kubernetes.io/local-cpu.model"] == "Intel_Xeon_Platinum_8480"
    assert spr["feature.node.kubernetes.io/system-os_release.ID"] == "ubuntu"
    assert "feature.node.kubernetes.io/pci-10de.present" not in spr
    wait_for(lambda: apps.read_namespaced_daemon_set_status("gfd", ns).status.number_ready == 3)
    h100 = wait_for(lambda: (lb := labels("gpu-h100-0")).get("nvidia.com/gpu.product") and lb)
    assert h100["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100["nvidia.com/gpu.memory"] == "81559"
    assert h100["nvidia.com/gpu.count"] == "8"
    assert h100["nvidia.com/gpu.compute.major"] == "9"
    a100 = wait_for(lambda: (lb := labels("gpu-a100-mig-0")).get("nvidia.com/mig.strategy") and lb)
    assert a100["nvidia.com/mig.strategy"] == "mixed"
    assert a100["nvidia.com/mig-1g.10gb.count"] == "7" and a100["nvidia.com/mig-3g.40gb.count"] == "2"
    mi300 = labels("gpu-mi300x-0")
    assert mi300["feature.node.kubernetes.io/pci-1002.present"] == "true"
    assert "nvidia.com/gpu.product" not in mi300


def test_presets_size_nodes_like_their_hardware():
    assert {"gpu-mixed", "cpu-small", "small-gpu"} <= set(preset_names())
    nodes = {n["metadata"]["name"]: n for n in load_nodes("gpu-mixed")}
    assert nodes["gpu-h100-0"]["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert nodes["gpu-mi300x-0"]["status"]["capacity"]["amd.com/gpu"] == "8"
    assert nodes["hpu-gaudi2-0"]["status"]["capacity"]["habana.ai/gaudi"] == "8"
    assert nodes["gpu-a100-mig-0"]["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "7"
    l4 = nodes["ip-10-0-12-34.ec2.internal"]
    assert l4["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "g6.xlarge"
    assert l4["status"]["allocatable"]["cpu"] == "3920m"
    assert nodes["control-plane-0"]["spec"]["taints"][0]["effect"] == "NoSchedule"
    assert not any(
        k.startswith(("feature.node", "nvidia.com/gpu."))
        for n in nodes.values()
        for k in n["metadata"]["labels"]
    )
    amd = hardware.amd_labels(nodes["gpu-mi300x-0"][HARDWARE_KEY])
    assert amd["amd.com/gpu.product-name"] == "AMD_Instinct_MI300X" and amd["amd.com/gpu.vram"] == "192G"
    assert len(load_nodes("small-gpu")) == 10
    l4_gfd = hardware.gfd_labels(l4[HARDWARE_KEY])
    assert (l4_gfd["nvidia.com/gpu.product"], l4_gfd["nvidia.com/gpu.family"]) == (
        "NVIDIA-L4",
        "ada-lovelace",
    )
    assert l4_gfd["nvidia.com/mig.strategy"] == "none"
    gaudi = hardware.nfd_labels(nodes["hpu-gaudi2-0"][HARDWARE_KEY])
    assert gaudi["feature.node.kubernetes.io/pci-1da3.present"] == "true"
    assert gaudi["feature.node.kubernetes.io/pci-8086.device-1020"] == "true"
    # The collectors chart's nfd-worker rule names each Habana device id (Gaudi2 is 1da3:1020).
    assert gaudi["feature.node.kubernetes.io/pci-1da3_1020.present"] == "true"
    assert hardware.gfd_labels(nodes["hpu-gaudi2-0"][HARDWARE_KEY]) == {}
    # Only Habana devices get the device-keyed label: the GPU labellers are scheduled by pci-<vendor>.present.
    mi300_nfd = hardware.nfd_labels(nodes["gpu-mi300x-0"][HARDWARE_KEY])
    assert mi300_nfd["feature.node.kubernetes.io/pci-1002.present"] == "true"
    assert not [k for k in mi300_nfd if k.startswith("feature.node.kubernetes.io/pci-1002_")]


def _chart_daemonset(suffix: str) -> dict:
    from tests.charts import helpers as charts

    objs = charts.render_objects("node_info_collector")
    return charts.one(objs, "DaemonSet", f"demo-{suffix}")


def test_collector_kind_recognises_the_collectors_the_chart_deploys():
    kinds = {
        suffix: [
            hardware.collector_kind(c)
            for c in _chart_daemonset(suffix)["spec"]["template"]["spec"]["containers"]
        ]
        for suffix in ("nfd-worker", "gpu-feature-discovery", "amd-gpu-labeller")
    }
    assert kinds == {
        "nfd-worker": ["nfd"],
        "gpu-feature-discovery": ["gfd"],
        "amd-gpu-labeller": ["amd-labeller"],
    }
    # The labeller mirrored into a private registry is still the labeller: the command names it.
    (labeller,) = _chart_daemonset("amd-gpu-labeller")["spec"]["template"]["spec"]["containers"]
    mirrored = {**labeller, "image": "registry.example.com/mirror/amd-labeller:1.31.0.9"}
    assert hardware.collector_kind(mirrored) == "amd-labeller"
    # The ROCm device plugin itself (same repository, no labeller) publishes nothing.
    plugin = {"image": "docker.io/rocm/k8s-device-plugin:1.31.0.9", "command": ["./k8s-device-plugin"]}
    assert hardware.collector_kind(plugin) is None


def test_amd_labeller_from_the_chart_labels_the_mi300x_node_once_nfd_found_it(
    gpu_cluster, apps, core, collector_ns
):
    ns = collector_ns

    chart_spec = _chart_daemonset("amd-gpu-labeller")["spec"]["template"]["spec"]
    apps.create_namespaced_daemon_set(
        ns,
        daemonset(
            "amd-labeller",
            "unused",
            containers=chart_spec["containers"],
            nodeSelector=chart_spec["nodeSelector"],
            tolerations=chart_spec["tolerations"],
        ),
    )
    apps.create_namespaced_daemon_set(ns, daemonset("nfd-worker", NFD_IMAGE, ["nfd-worker"]))
    mi300 = wait_for(
        lambda: (lb := core.read_node("gpu-mi300x-0").metadata.labels).get("amd.com/gpu.product-name") and lb
    )
    assert mi300["amd.com/gpu.product-name"] == "AMD_Instinct_MI300X"
    assert mi300["amd.com/gpu.vram"] == "192G" and mi300["amd.com/gpu.device-id"] == "74a1"
    wait_for(lambda: apps.read_namespaced_daemon_set_status("amd-labeller", ns).status.number_ready == 1)
    pods = core.list_namespaced_pod(ns, label_selector="app=amd-labeller").items
    assert [p.spec.node_name for p in pods] == ["gpu-mi300x-0"]
    assert not any(k.startswith("amd.com/") for k in core.read_node("gpu-h100-0").metadata.labels)
    gaudi_label = "feature.node.kubernetes.io/pci-1da3_1020.present"
    assert wait_for(lambda: core.read_node("hpu-gaudi2-0").metadata.labels.get(gaudi_label)) == "true"


def test_custom_node_file_is_accepted(tmp_path):
    path = tmp_path / "nodes.yaml"
    path.write_text(
        "kind: List\nitems:\n- metadata: {name: edge-1}\n  status:\n"
        "    capacity: {cpu: '2', memory: 4Gi, nvidia.com/gpu: '1'}\n"
    )
    (node,) = load_nodes(str(path))
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "edge-1"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert "10de" in node[HARDWARE_KEY]["pci_vendors"]
    with pytest.raises(ValueError, match="unknown node preset"):
        load_nodes("no-such-preset")


# ------------------------------------------------------------------------------------------- jobs


def test_job_completes(batch, core, ns):
    batch.create_namespaced_job(ns, job("ok"))
    assert wait_for(lambda: job_condition(batch, ns, "ok")) == "Complete"
    status = batch.read_namespaced_job_status("ok", ns).status
    assert status.succeeded == 1 and status.completion_time is not None
    pods = core.list_namespaced_pod(ns, label_selector="job-name=ok").items
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert "Completed" in {e.reason for e in core.list_namespaced_event(ns).items}


def test_job_fails_by_env_and_by_fault(gpu_cluster, batch, ns):
    batch.create_namespaced_job(ns, job("bad", env=[{"name": "DEVCLUSTER_FAIL", "value": "1"}]))
    assert wait_for(lambda: job_condition(batch, ns, "bad")) == "Failed"
    failed = next(
        c for c in batch.read_namespaced_job_status("bad", ns).status.conditions if c.type == "Failed"
    )
    assert failed.reason == "BackoffLimitExceeded"
    gpu_cluster.set_fault(gpu_cluster.names[0], "job-fail", f"{ns}/doomed")
    try:
        batch.create_namespaced_job(ns, job("doomed", backoff=6))
        assert wait_for(lambda: job_condition(batch, ns, "doomed")) == "Failed"
    finally:
        gpu_cluster.set_fault(gpu_cluster.names[0], "clear", f"{ns}/doomed")


def test_model_transfer_job_reports_progress(batch, core, ns):
    labels = {"app.kubernetes.io/component": "model-transfer"}
    batch.create_namespaced_job(
        ns, job("fetch", env=[{"name": "MODEL_SIZE_BYTES", "value": "5000000"}], labels=labels)
    )
    seen = wait_for(lambda: (cm := _progress(core, ns)) and cm["phase"] == "Running" and cm)
    assert seen["bytes_total"] == "5000000"
    final = wait_for(lambda: (cm := _progress(core, ns)) and cm["phase"] == "Succeeded" and cm)
    assert final["bytes_done"] == "5000000"


def _progress(core: client.CoreV1Api, ns: str) -> dict | None:
    try:
        return core.read_namespaced_config_map("fetch-progress", ns).data
    except client.ApiException:
        return None


# ------------------------------------------------------------------------------------------- storage + services


def test_pvc_binds_to_the_default_storage_class(kube_api, core, ns):
    sc = client.StorageV1Api(kube_api).read_storage_class("standard")
    assert sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
        },
    )
    pvc = wait_for(
        lambda: (c := core.read_namespaced_persistent_volume_claim("models", ns)).status.phase == "Bound"
        and c
    )
    assert pvc.spec.storage_class_name == "standard"
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.claim_ref.name == "models" and pv.spec.capacity["storage"] == "20Gi"
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "lost"},
            "spec": {
                "storageClassName": "nope",
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(lambda: any(e.reason == "ProvisioningFailed" for e in core.list_namespaced_event(ns).items))
    assert core.read_namespaced_persistent_volume_claim("lost", ns).status.phase == "Pending"


def test_service_gets_cluster_ip_and_endpoints_follow_ready_pods(apps, core, ns):
    apps.create_namespaced_deployment(ns, deployment("api", 2))
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "api"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    svc = wait_for(lambda: (s := core.read_namespaced_service("api", ns)).spec.cluster_ip and s)
    assert svc.spec.cluster_ip.startswith("10.96.")

    def ready_ips() -> list[str]:
        subsets = core.read_namespaced_endpoints("api", ns).subsets or []
        return [a.ip for s in subsets for a in s.addresses or []]

    assert len(wait_for(lambda: len(ready_ips()) == 2 and ready_ips())) == 2
    apps.patch_namespaced_deployment_scale("api", ns, {"spec": {"replicas": 1}})
    wait_for(lambda: len(ready_ips()) == 1)
    assert core.read_namespaced_endpoints("api", ns).subsets[0].ports[0].port == 8080


def test_statefulset_creates_ordered_pods_with_their_claims(apps, core, ns):
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "postgres:17"}]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }
    apps.create_namespaced_stateful_set(ns, sts)
    wait_for(lambda: apps.read_namespaced_stateful_set_status("db", ns).status.ready_replicas == 2)
    pods = sorted(p.metadata.name for p in core.list_namespaced_pod(ns).items)
    assert pods == ["db-0", "db-1"]
    claims = {c.metadata.name: c.status.phase for c in core.list_namespaced_persistent_volume_claim(ns).items}
    assert claims == {"data-db-0": "Bound", "data-db-1": "Bound"}
    pod = core.read_namespaced_pod("db-1", ns)
    assert pod.spec.hostname == "db-1" and pod.spec.subdomain == "db"
