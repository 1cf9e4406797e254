"""node_info_collector: NFD (worker, master, gc), GPU feature discovery, the AMD GPU node labeller, the Gaudi
device-id rule and the CPU-model feature file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from hardware.inventory import parse_node

from . import helpers as h

CHART = "node_info_collector"
GFD_SELECTOR = "feature.node.kubernetes.io/pci-10de.present"
AMD_SELECTOR = "feature.node.kubernetes.io/pci-1002.present"
ROLE_FILE = Path(__file__).resolve().parents[2] / "playbooks" / "files" / "budcluster-clusterrole.yaml"


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"gfd": {"enabled": False}},
        {"cpuModelFeature": {"enabled": False}},
        {"amdLabeller": {"enabled": False}},
    ],
)
def test_lints_clean(values):
    assert h.lint(CHART, values) == []


@pytest.mark.parametrize("gpus", [True, False])
def test_render_is_valid_kubernetes(gpus):
    objs = h.render_objects(CHART, {"gfd": {"enabled": gpus}, "amdLabeller": {"enabled": gpus}})
    native = list(h.k8s_native(objs))
    assert native, "nothing rendered"
    for obj in native:
        h.validate(obj)
    assert bool(h.find(objs, "DaemonSet", "demo-gpu-feature-discovery")) is gpus
    assert bool(h.find(objs, "DaemonSet", "demo-amd-gpu-labeller")) is gpus
    assert bool(h.find(objs, "ClusterRole", "demo-amd-gpu-labeller")) is gpus
    assert bool(h.find(objs, "ServiceAccount", "demo-amd-gpu-labeller")) is gpus


def test_validation_is_not_vacuous():
    worker = h.one(h.render_objects(CHART), "DaemonSet", "demo-nfd-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(Exception, match=r"imagePullPolicy|not of type"):
        h.validate(worker)


def test_everything_lands_in_bud_system_with_standard_labels():
    objs = h.render_objects(CHART)
    namespaced = [
        o
        for o in objs
        if o["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    ]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"bud-system"}
    assert h.one(objs, "Namespace")["metadata"]["name"] == "bud-system"
    for obj in objs:
        labels = obj["metadata"]["labels"]
        for key in ("name", "instance", "component", "managed-by"):
            assert labels.get(f"app.kubernetes.io/{key}"), (obj["kind"], obj["metadata"]["name"], key)


def test_nfd_components_use_the_recognised_image():
    objs = h.render_objects(CHART)
    for kind, name, binary in [
        ("DaemonSet", "demo-nfd-worker", "nfd-worker"),
        ("Deployment", "demo-nfd-master", "nfd-master"),
        ("Deployment", "demo-nfd-gc", "nfd-gc"),
    ]:
        (container,) = h.containers(h.one(objs, kind, name))
        assert container["image"].startswith("registry.k8s.io/nfd/node-feature-discovery:v0.18")
        assert container["command"] == [binary]


def test_gfd_runs_only_on_nvidia_nodes():
    objs = h.render_objects(CHART, {"gfd": {"nodeSelector": {"pool": "gpu"}}})
    gfd = h.one(objs, "DaemonSet", "demo-gpu-feature-discovery")
    spec = gfd["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {GFD_SELECTOR: "true", "pool": "gpu"}
    (container,) = spec["containers"]
    assert container["image"].startswith("nvcr.io/nvidia/k8s-device-plugin:")
    assert container["command"] == ["gpu-feature-discovery"]
    # GFD writes its labels as a feature file into the directory nfd-worker reads.
    out = next(m for m in container["volumeMounts"] if m["name"] == "output-dir")
    assert out["mountPath"] == "/etc/kubernetes/node-feature-discovery/features.d"


def test_worker_publishes_pci_vendor_labels_gfd_depends_on():
    objs = h.render_objects(CHART)
    conf = h.one(objs, "ConfigMap", "demo-nfd-worker-conf")["data"]["nfd-worker.conf"]
    # Without vendor-only labels NFD would publish pci-0302_10de.present, and GFD would never schedule.
    assert 'deviceLabelFields: ["vendor"]' in conf
    assert '"03"' in conf


def test_amd_labeller_runs_only_on_amd_nodes_with_the_labels_the_inventory_reads():
    objs = h.render_objects(CHART, {"amdLabeller": {"nodeSelector": {"pool": "mi300"}}})
    labeller = h.one(objs, "DaemonSet", "demo-amd-gpu-labeller")
    spec = labeller["spec"]["template"]["spec"]
    # Only where NFD found an AMD PCI device, the label the worker's vendor-only naming produces.
    assert spec["nodeSelector"] == {AMD_SELECTOR: "true", "pool": "mi300"}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    repository, tag = container["image"].rsplit(":", 1)
    assert repository == "docker.io/rocm/k8s-device-plugin"
    assert tag.startswith("labeller-") and tag != "labeller-latest", "the image is pinned by version"
    assert container["command"] == ["./k8s-node-labeller"] and container["workingDir"] == "/root"
    assert {"-product-name", "-vram", "-device-id", "-driver-version"} <= set(container["args"])
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"DS_NODE_NAME": "spec.nodeName"}  # the labeller labels only its own node
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {volumes[m["name"]]: (m["mountPath"], m.get("readOnly")) for m in container["volumeMounts"]}
    assert mounts == {"/sys": ("/sys", True), "/dev": ("/dev", True)}
    assert spec["serviceAccountName"] == "demo-amd-gpu-labeller"
    assert spec.get("automountServiceAccountToken") is not False


def test_amd_labeller_may_label_nodes_and_nothing_else():
    objs = h.render_objects(CHART)
    account = h.one(objs, "ServiceAccount", "demo-amd-gpu-labeller")
    assert account["metadata"]["namespace"] == "bud-system"
    assert account.get("automountServiceAccountToken") is not False  # it talks to the API server
    role = h.one(objs, "ClusterRole", "demo-amd-gpu-labeller")
    # controller-runtime's client.Update writes the whole Node: update, not patch.
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "update"]}
    ]
    binding = h.one(objs, "ClusterRoleBinding", "demo-amd-gpu-labeller")
    assert binding["roleRef"]["name"] == "demo-amd-gpu-labeller"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-amd-gpu-labeller", "namespace": "bud-system"}
    ]


def test_budcluster_holds_every_right_the_chart_grants():
    """Kubernetes lets BudCluster create a role only with rights it holds itself (it has no `escalate`)."""
    held = {
        (group, resource, verb)
        for rule in yaml.safe_load(ROLE_FILE.read_text())["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for role in h.find(h.render_objects(CHART), "ClusterRole") + h.find(h.render_objects(CHART), "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    missing = {v for v in rule["verbs"] if (group, resource, v) not in held}
                    assert not missing, (role["metadata"]["name"], group, resource, missing)


def _gaudi_rule() -> dict:
    objs = h.render_objects(CHART)
    conf = yaml.safe_load(h.one(objs, "ConfigMap", "demo-nfd-worker-conf")["data"]["nfd-worker.conf"])
    (rule,) = conf["sources"]["custom"]
    return rule


def _expand_device_template(template: str, device: str) -> dict[str, str]:
    """What NFD makes of a `{{ range .pci.device }}...{{ .device }}...{{ end }}` template for one device."""
    head, _, rest = template.partition("{{ range .pci.device }}")
    body, _, tail = rest.partition("{{ end }}")
    assert not head.strip() and not tail.strip() and "{{ .device }}" in body, template
    key, _, value = body.replace("{{ .device }}", device).strip().partition("=")
    return {key: value}


def test_worker_names_the_gaudi_device_id_and_the_inventory_reads_the_generation():
    rule = _gaudi_rule()
    # Only Habana Labs devices: the other vendors keep their vendor-only labels (the GPU labellers' selectors).
    (term,) = rule["matchFeatures"]
    assert term["feature"] == "pci.device"
    assert term["matchExpressions"] == {"vendor": {"op": "In", "value": ["1da3"]}}
    labels = _expand_device_template(rule["labelsTemplate"], "1020")
    assert labels == {"feature.node.kubernetes.io/pci-1da3_1020.present": "true"}
    node = {
        "metadata": {
            "name": "hpu-0",
            "labels": {"feature.node.kubernetes.io/pci-1da3.present": "true", **labels},
        },
        "status": {
            "capacity": {"cpu": "160", "habana.ai/gaudi": "8"},
            "allocatable": {"habana.ai/gaudi": "8"},
        },
    }
    inv = parse_node(node)
    assert (inv.accelerator_type, inv.accelerator_model, inv.accelerator_count) == ("hpu", "Gaudi2", 8)
    assert inv.accelerator_memory_mib == 96 * 1024


def test_components_can_be_switched_off_and_placed():
    values = {
        "nfd": {
            "gc": {"enabled": False},
            "master": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
            "worker": {
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}
                ]
            },
        },
        "gfd": {"enabled": False},
        "namespace": "hw-discovery",
    }
    objs = h.render_objects(CHART, values)
    assert not h.find(objs, "Deployment", "demo-nfd-gc")
    assert not h.find(objs, "ClusterRole", "demo-nfd-gc")
    master = h.one(objs, "Deployment", "demo-nfd-master")["spec"]["template"]["spec"]
    assert master["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    worker = h.one(objs, "DaemonSet", "demo-nfd-worker")["spec"]["template"]["spec"]
    assert worker["tolerations"][0]["key"] == "dedicated"
    assert h.one(objs, "Namespace")["metadata"]["name"] == "hw-discovery"


def test_worker_rbac_is_namespaced_and_master_can_label_nodes():
    objs = h.render_objects(CHART)
    role = h.one(objs, "Role", "demo-nfd-worker")
    assert role["rules"][0]["resources"] == ["nodefeatures"]
    master = h.one(objs, "ClusterRole", "demo-nfd-master")
    node_rule = next(r for r in master["rules"] if r["resources"] == ["nodes"])
    assert "patch" in node_rule["verbs"]
    binding = h.one(objs, "ClusterRoleBinding", "demo-nfd-master")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "demo-nfd-master",
        "namespace": "bud-system",
    }


def test_crds_are_optional():
    assert len(h.find(h.render_objects(CHART), "CustomResourceDefinition")) == 2
    assert not h.find(h.render_objects(CHART, {"nfd": {"installCRDs": False}}), "CustomResourceDefinition")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"gfd": {"migStrategy": "sometimes"}}, "migStrategy"),
        ({"nfd": {"worker": {"enabled": "yes"}}}, "enabled"),
        ({"surprise": 1}, "surprise"),
        ({"namespace": "Bud_System"}, "namespace"),
        ({"nfd": {"master": {"replicas": -1}}}, "replicas"),
        ({"amdLabeller": {"image": {"tag": ""}}}, "tag"),
        ({"amdLabeller": {"privileged": True}}, "privileged"),
    ],
)
def test_schema_rejects_bad_values(values, needle):
    with pytest.raises(helm.HelmValuesError, match=needle):
        h.render(CHART, values)


# /proc/cpuinfo excerpts: 2 sockets x 2 cores x 2 threads (Intel), and a VM without topology (AMD).
INTEL_CPUINFO = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
    f"model name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: {i // 4}\ncore id\t\t: {(i // 2) % 2}\n"
    "flags\t\t: fpu avx2 avx512f amx_bf16\n\n"
    for i in range(8)
)
AMD_VM_CPUINFO = "".join(
    f"processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC 9654 96-Core Processor\n\n"
    for i in range(4)
)


def _run_cpu_script(tmp_path: Path, cpuinfo: str) -> dict[str, str]:
    objs = h.render_objects(CHART)
    script = h.one(objs, "ConfigMap", "demo-cpu-model-feature")["data"]["cpu-model-feature.sh"]
    (tmp_path / "script.sh").write_text(script)
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    out_dir = tmp_path / "features.d"
    subprocess.run(
        ["/bin/sh", str(tmp_path / "script.sh")],
        env={"PATH": "/usr/bin:/bin", "CPUINFO": str(tmp_path / "cpuinfo"), "FEATURES_DIR": str(out_dir)},
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert [p.name for p in out_dir.iterdir()] == ["bud-cpu-model"], "temporary file left behind"
    lines = (out_dir / "bud-cpu-model").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_cpu_model_feature_file_from_intel_host(tmp_path):
    features = _run_cpu_script(tmp_path, INTEL_CPUINFO)
    assert features == {
        "local-cpu.vendor": "Intel",
        "local-cpu.model": "Intel-R-Xeon-R-Platinum-8480",
        "local-cpu.family": "6",
        "local-cpu.sockets": "2",
        "local-cpu.cores": "4",
        "local-cpu.threads": "8",
    }


def test_cpu_model_feature_file_without_topology(tmp_path):
    features = _run_cpu_script(tmp_path, AMD_VM_CPUINFO)
    assert features["local-cpu.vendor"] == "AMD"
    assert features["local-cpu.model"] == "AMD-EPYC-9654-96-Core-Processor"
    assert features["local-cpu.cores"] == features["local-cpu.threads"] == "4"
    assert features["local-cpu.sockets"] == "1"


def test_cpu_feature_runs_before_the_worker_and_shares_features_dir():
    worker = h.one(h.render_objects(CHART), "DaemonSet", "demo-nfd-worker")
    (init,) = h.containers(worker, init=True)
    (main,) = h.containers(worker)
    init_mount = next(m for m in init["volumeMounts"] if m["name"] == "features-d")
    main_mount = next(m for m in main["volumeMounts"] if m["name"] == "features-d")
    assert init_mount.get("readOnly") is not True
    assert main_mount["mountPath"].rstrip("/") == "/etc/kubernetes/node-feature-discovery/features.d"
    assert not h.containers(
        h.one(
            h.render_objects(CHART, {"cpuModelFeature": {"enabled": False}}), "DaemonSet", "demo-nfd-worker"
        ),
        init=True,
    )
