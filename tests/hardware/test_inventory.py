"""The node inventory parser on real-world Node objects, partial/malformed nodes and pod accounting."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hardware.inventory import NodeInventory, parse_node, parse_nodes
from hardware.nodefiles import load_node_objects
from hardware.pods import free_devices, requested_by_pods

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nodes"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.yaml"))

JSON_KEYS = [
    "node",
    "ready",
    "schedulable",
    "taints",
    "accelerator_type",
    "accelerator_vendor",
    "accelerator_model",
    "accelerator_count",
    "accelerator_memory_mib",
    "mig",
    "cpu_vendor",
    "cpu_model",
    "cpu_cores",
    "memory_bytes",
    "cpu_flags",
    "notes",
]


def _fixture(name: str) -> dict[str, Any]:
    [node] = load_node_objects(FIXTURES / f"{name}.yaml")
    return node


def test_there_are_enough_real_world_fixtures_and_each_names_its_source() -> None:
    assert len(FIXTURE_NAMES) >= 10
    for name in FIXTURE_NAMES:
        head = (FIXTURES / f"{name}.yaml").read_text().splitlines()[0]
        assert head.startswith("# Source"), name
        assert (FIXTURES / f"{name}.expected.json").is_file(), name


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_parses_to_its_expected_inventory(name: str) -> None:
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    got = parse_node(_fixture(name)).to_dict()

    assert list(got)[: len(JSON_KEYS)] == JSON_KEYS
    for key, value in expected.items():
        if key == "notes":
            continue
        assert got[key] == value, f"{name}: {key}"
    # Notes: each expected phrase appears in its own note, and nothing else was reported.
    remaining = list(got["notes"])
    for phrase in expected["notes"]:
        match = next((note for note in remaining if phrase in note), None)
        assert match is not None, f"{name}: no note mentions {phrase!r} in {got['notes']}"
        remaining.remove(match)
    assert remaining == [], f"{name}: unexpected notes {remaining}"
    json.dumps(got)  # the command prints this; it must be plain JSON


# ---------------------------------------------------------------------------------------------
# Degrading, never raising
# ---------------------------------------------------------------------------------------------


def test_an_empty_object_degrades_to_nulls_with_notes() -> None:
    inv = parse_node({})
    assert inv.node is None
    assert inv.ready is False
    assert inv.memory_bytes is None and inv.cpu_threads is None
    assert inv.accelerator_type == "cpu"
    text = " | ".join(inv.notes)
    assert "metadata.name missing" in text
    assert "no Ready condition" in text


def test_gpu_capacity_without_any_product_label_is_reported_not_guessed() -> None:
    node = {
        "metadata": {"name": "bare-gpu"},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}, "conditions": []},
    }
    inv = parse_node(node)
    assert (inv.accelerator_type, inv.accelerator_vendor, inv.accelerator_count) == ("cuda", "NVIDIA", 2)
    assert inv.accelerator_model is None and inv.accelerator_memory_mib is None
    assert any("no nvidia.com/gpu.product label" in n for n in inv.notes)
    assert any("GPU memory unknown" in n for n in inv.notes)


@pytest.mark.parametrize(
    ("path", "bad", "field", "fallback", "phrase"),
    [
        (("status", "capacity", "memory"), "lots", "memory_bytes", None, "status.capacity.memory"),
        (("status", "capacity", "cpu"), "2 cores", "cpu_threads", None, "status.capacity.cpu"),
        # a broken capacity falls back to GPU feature discovery's count label
        (("status", "capacity", "nvidia.com/gpu"), "1.5", "accelerator_count", 8, "whole device count"),
        # an unreadable memory label falls back to the size in the product name
        (
            ("metadata", "labels", "nvidia.com/gpu.memory"),
            "80GB",
            "accelerator_memory_mib",
            81920,
            "not an integer",
        ),
        (
            ("metadata", "labels", "feature.node.kubernetes.io/cpu-model.family"),
            "six",
            "cpu_family",
            None,
            "family",
        ),
    ],
)
def test_malformed_values_degrade_with_a_note(
    path: tuple[str, ...], bad: str, field: str, fallback: int | None, phrase: str
) -> None:
    node = copy.deepcopy(_fixture("h100-xe9680"))
    node["metadata"]["labels"]["feature.node.kubernetes.io/cpu-model.family"] = "6"
    target = node
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    inv = parse_node(node)
    assert inv.to_dict()[field] == fallback
    assert any(phrase in n and repr(bad) in n for n in inv.notes), inv.notes


def test_structurally_wrong_sections_are_ignored_with_notes() -> None:
    node = {
        "metadata": {"name": "odd", "labels": ["not", "a", "map"]},
        "spec": {"taints": [{"effect": "NoSchedule"}, "junk"], "unschedulable": "yes"},
        "status": {"capacity": "none", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    inv = parse_node(node)
    assert inv.ready is True
    assert inv.taints == []
    assert inv.schedulable is True  # only the boolean true cordons
    assert sum("malformed taint" in n for n in inv.notes) == 2
    assert any("metadata.labels is not a mapping" in n for n in inv.notes)
    assert any("status.capacity is not a mapping" in n for n in inv.notes)


def test_a_non_mapping_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse_node(["not", "a", "node"])  # type: ignore[arg-type]


def test_prefer_no_schedule_taint_keeps_a_node_schedulable() -> None:
    node = _fixture("cpu-intel-amx")
    node["spec"] = {"taints": [{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}]}
    assert parse_node(node).schedulable is True
    node["spec"]["taints"].append({"key": "dedicated", "effect": "NoExecute"})
    assert parse_node(node).schedulable is False


# ---------------------------------------------------------------------------------------------
# Vendor-specific label shapes
# ---------------------------------------------------------------------------------------------


def _gpu_node(labels: dict[str, str], capacity: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "n", "labels": labels},
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", **capacity},
            "allocatable": {"cpu": "16", "memory": "63Gi", **capacity},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_gaudi_with_vendor_only_pci_label_has_unknown_generation() -> None:
    node = _gpu_node({"feature.node.kubernetes.io/pci-1da3.present": "true"}, {"habana.ai/gaudi": "8"})
    inv = parse_node(node)
    assert (inv.accelerator_type, inv.accelerator_vendor, inv.accelerator_count) == ("hpu", "Intel", 8)
    assert inv.accelerator_model is None and inv.accelerator_memory_mib is None
    assert any("generation unknown" in n for n in inv.notes)


@pytest.mark.parametrize(
    ("label", "model", "memory"),
    [
        ("pci-1200_1da3_1000.present", "Gaudi", 32768),
        ("pci-1da3_1021.present", "Gaudi2", 98304),
        ("pci-1200_1da3_1060.present", "Gaudi3", 131072),
    ],
)
def test_gaudi_generation_from_pci_device_id(label: str, model: str, memory: int) -> None:
    node = _gpu_node({f"feature.node.kubernetes.io/{label}": "true"}, {"habana.ai/gaudi": "8"})
    inv = parse_node(node)
    assert (inv.accelerator_model, inv.accelerator_memory_mib) == (model, memory)


def test_amd_beta_labels_only_and_no_device_plugin() -> None:
    labels = {"beta.amd.com/gpu.device-id.740f": "4", "beta.amd.com/gpu.vram.64G": "4"}
    inv = parse_node(_gpu_node(labels, {}))
    assert inv.accelerator_model == "AMD Instinct MI210"
    assert inv.accelerator_memory_mib == 64 * 1024
    assert inv.accelerator_count == 4
    assert inv.allocatable["accelerators"] == 0  # nothing schedulable without the device plugin
    assert any("device plugin not running" in n for n in inv.notes)


def test_amd_product_name_label_wins_over_the_id_table() -> None:
    labels = {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM", "amd.com/gpu.device-id": "74a1"}
    inv = parse_node(_gpu_node(labels, {"amd.com/gpu": "8"}))
    assert inv.accelerator_model == "AMD Instinct MI300X OAM"
    assert inv.accelerator_memory_mib == 192 * 1024  # nominal, no vram label
    assert any("nominal size of MI300X" in n for n in inv.notes)


def test_nvidia_new_style_version_labels_and_time_slicing() -> None:
    labels = {
        "nvidia.com/gpu.product": "NVIDIA-A10G-SHARED",
        "nvidia.com/gpu.memory": "23028",
        "nvidia.com/gpu.replicas": "4",
        "nvidia.com/gpu.sharing-strategy": "time-slicing",
        "nvidia.com/cuda.driver-version.full": "550.54.15",
        "nvidia.com/cuda.runtime-version.full": "12.4",
    }
    inv = parse_node(_gpu_node(labels, {"nvidia.com/gpu": "16"}))
    assert inv.accelerator_count == 4  # 16 advertised replicas of 4 GPUs
    assert (inv.driver_version, inv.cuda_version) == ("550.54.15", "12.4")
    assert any("time-slicing" in n for n in inv.notes)


def test_mig_mixed_with_some_whole_gpus_counts_only_whole_ones() -> None:
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"}
    capacity = {"nvidia.com/gpu": "6", "nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "4"}
    capacity["nvidia.com/mig-2g.20gb"] = "0"
    inv = parse_node(_gpu_node(labels, capacity))
    assert inv.accelerator_count == 6
    assert inv.mig == {"1g.10gb": 7, "3g.40gb": 4}
    assert inv.accelerator_memory_mib == 80 * 1024


def test_mig_single_strategy_fills_the_mig_map_and_counts_slices() -> None:
    # GFD under mig.strategy=single names the product after the slice and counts slices; the device plugin
    # advertises the slices as nvidia.com/gpu (two A100-40GB cut into 7 x 1g.5gb each).
    labels = {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
        "nvidia.com/gpu.count": "14",
        "nvidia.com/gpu.memory": "4864",
        "nvidia.com/mig.strategy": "single",
    }
    inv = parse_node(_gpu_node(labels, {"nvidia.com/gpu": "14"}))
    assert inv.mig == {"1g.5gb": 14}
    assert (inv.accelerator_count, inv.accelerator_memory_mib) == (14, 4864)
    assert inv.accelerator_model == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert any("MIG single strategy" in n for n in inv.notes)

    # Pods ask for a slice as nvidia.com/gpu: the profile's free count follows.
    pod = _pod("slice", "n", "Running", gpus=3)
    free = free_devices(inv, [pod])
    assert free["mig"] == {"1g.5gb": {"total": 14, "requested": 3, "free": 11}}
    assert free["accelerators"]["free"] == 11


def test_mig_single_strategy_without_device_plugin_or_memory_label() -> None:
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb", "nvidia.com/gpu.count": "4"}
    inv = parse_node(_gpu_node(labels, {}))
    assert inv.mig == {"3g.40gb": 4}
    assert inv.mig_strategy == "single"  # the product name says so even without the label
    assert inv.accelerator_count == 4 and inv.allocatable["accelerators"] == 0
    # The slice's nominal size from its profile, not the board's 80 GB.
    assert inv.accelerator_memory_mib == 40 * 1024
    assert any("nominal size of NVIDIA-A100-SXM4-80GB-MIG-3g.40gb" in n for n in inv.notes)


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(
            {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.present": "true"}, id="gfd-no-count"
        ),
        pytest.param({"feature.node.kubernetes.io/pci-0302_10de.present": "true"}, id="nfd-pci-only"),
        pytest.param({"feature.node.kubernetes.io/pci-1200_1da3_1020.present": "true"}, id="gaudi-pci-only"),
    ],
)
def test_gpu_node_without_capacity_or_count_label_has_an_unknown_count(labels: dict[str, str]) -> None:
    inv = parse_node(_gpu_node(labels, {}))
    assert inv.accelerator_type != "cpu"
    assert inv.accelerator_count is None  # unknown, not "no devices"
    assert inv.allocatable["accelerators"] == 0  # nothing schedulable without a device plugin
    assert any("no count label: device count unknown" in n for n in inv.notes), inv.notes
    assert json.loads(json.dumps(inv.to_dict()))["accelerator_count"] is None


def test_memory_nobody_labelled_comes_from_the_gpu_table() -> None:
    inv = parse_node(_gpu_node({"nvidia.com/gpu.product": "NVIDIA-L4"}, {"nvidia.com/gpu": "1"}))
    assert inv.accelerator_memory_mib == 24 * 1024  # the datasheet's 24 GB, not a driver's figure
    assert any("24576 MiB is the nominal size of NVIDIA-L4" in n for n in inv.notes)
    # A node that reports its memory keeps its own figure.
    labelled = {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.memory": "23034"}
    assert parse_node(_gpu_node(labelled, {"nvidia.com/gpu": "1"})).accelerator_memory_mib == 23034
    # One device of an MI250X is one of its two dies: 64 GB, not the board's 128 GB.
    mi250 = parse_node(_gpu_node({"amd.com/gpu.device-id": "7408"}, {"amd.com/gpu": "8"}))
    assert (mi250.accelerator_model, mi250.accelerator_memory_mib) == ("AMD Instinct MI250X", 64 * 1024)


def test_cpu_model_hook_in_another_namespace_and_raw_vendor_id() -> None:
    labels = {
        "bud.studio/local-cpu.model": "Intel(R)_Xeon(R)_Platinum_8480+",
        "feature.node.kubernetes.io/cpu-model.vendor_id": "GenuineIntel",
        "feature.node.kubernetes.io/cpu-hardware_multithreading": "false",
    }
    inv = parse_node(_gpu_node(labels, {}))
    assert inv.cpu_model == "Intel(R) Xeon(R) Platinum 8480+"
    assert inv.cpu_vendor == "Intel"
    assert inv.cpu_cores == 16  # no hyper-threading: one core per logical CPU


def test_unknown_cpu_vendor_is_kept_with_a_note() -> None:
    inv = parse_node(_gpu_node({"feature.node.kubernetes.io/cpu-model.vendor_id": "Zhaoxin"}, {}))
    assert inv.cpu_vendor == "Zhaoxin"
    assert any("unrecognised CPU vendor" in n for n in inv.notes)


# ---------------------------------------------------------------------------------------------
# Input formats
# ---------------------------------------------------------------------------------------------


def _two_nodes() -> list[dict[str, Any]]:
    return [_fixture("h100-xe9680"), _fixture("cpu-intel-amx")]


def _names(nodes: list[dict[str, Any]]) -> list[str | None]:
    return [inv.node for inv in parse_nodes(nodes)]


@pytest.mark.parametrize(
    ("render", "count"),
    [
        pytest.param(lambda ns: yaml.safe_dump(ns[0]), 1, id="one-yaml-object"),
        pytest.param(lambda ns: json.dumps(ns[0], default=str), 1, id="one-json-object"),
        pytest.param(lambda ns: yaml.safe_dump(ns), 2, id="yaml-list"),
        pytest.param(lambda ns: json.dumps(ns, default=str), 2, id="json-list"),
        pytest.param(
            lambda ns: yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": ns}), 2, id="kind-List"
        ),
        pytest.param(
            lambda ns: json.dumps({"kind": "NodeList", "items": ns}, default=str), 2, id="NodeList-json"
        ),
        pytest.param(lambda ns: yaml.safe_dump_all(ns), 2, id="yaml-multi-document"),
    ],
)
def test_node_lists_load_in_every_format(render: Any, count: int, tmp_path: Path) -> None:
    text = render(_two_nodes())
    expected = ["xe9680-h100-01", "auto-int-k8w02"][:count]
    assert _names(load_node_objects(text)) == expected
    path = tmp_path / "nodes.txt"
    path.write_text(text)
    assert _names(load_node_objects(str(path))) == expected
    assert _names(load_node_objects(path)) == expected


def test_loading_refuses_non_nodes_and_garbage() -> None:
    with pytest.raises(ValueError, match="Pod"):
        load_node_objects(yaml.safe_dump({"kind": "List", "items": [{"kind": "Pod", "metadata": {}}]}))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_node_objects("kind: [unclosed")
    with pytest.raises(ValueError, match="no such file"):
        load_node_objects("nodes-typo.yaml")
    with pytest.raises(ValueError, match="not a Node"):
        load_node_objects("- 1\n- 2\n")


# ---------------------------------------------------------------------------------------------
# Requested and free
# ---------------------------------------------------------------------------------------------


def _pod(
    name: str, node: str | None, phase: str, gpus: int = 0, cpu: str = "1", memory: str = "1Gi", **extra: Any
):
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}  # GPUs are usually set as limits only
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": resources}], **extra}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": spec, "status": {"phase": phase}}


def test_free_gpus_subtract_running_and_bound_pending_pods_only() -> None:
    inv = parse_node(_fixture("h100-xe9680"))
    pods = [
        _pod("serving", "xe9680-h100-01", "Running", gpus=2, cpu="8", memory="64Gi"),
        _pod("starting", "xe9680-h100-01", "Pending", gpus=1),  # bound, image still pulling
        _pod("unscheduled", None, "Pending", gpus=4),  # not bound: holds nothing
        _pod("done", "xe9680-h100-01", "Succeeded", gpus=4),
        _pod("crashed", "xe9680-h100-01", "Failed", gpus=4),
        _pod("elsewhere", "other-node", "Running", gpus=8),
    ]
    free = free_devices(inv, pods)
    assert free["accelerators"] == {"total": 8, "allocatable": 8, "requested": 3, "free": 5}
    assert free["pods"] == 2
    assert free["cpu_millicores"]["requested"] == 9000
    assert free["cpu_millicores"]["free"] == 224000 - 9000
    assert free["memory_bytes"]["requested"] == 65 * 1024**3


def test_requests_follow_the_scheduler_rules_for_init_containers_and_overhead() -> None:
    pod = _pod("p", "n", "Running", cpu="500m", memory="1Gi", overhead={"cpu": "250m"})
    pod["spec"]["initContainers"] = [
        {"name": "fetch", "resources": {"requests": {"cpu": "2", "memory": "512Mi"}}},
        {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
    ]
    requested = requested_by_pods("n", [pod])
    # cpu: max(500m + 100m sidecar, 2 init) + 250m overhead; memory: max(1Gi, 512Mi)
    assert requested["cpu_millicores"] == 2250
    assert requested["memory_bytes"] == 1024**3


def test_free_never_goes_negative_and_bad_pods_are_skipped() -> None:
    inv = parse_node(_fixture("t4-eks-g4dn"))
    pods = [_pod("a", inv.node, "Running", gpus=1), _pod("b", inv.node, "Running", gpus=1)]
    broken = _pod("broken", inv.node, "Running", cpu="lots")
    free = free_devices(inv, [*pods, broken])
    assert free["accelerators"]["free"] == 0
    assert free["skipped_pods"] == ["ml/broken"]


def test_mig_slices_are_accounted_per_profile() -> None:
    inv = parse_node(_fixture("a100-mig-mixed"))
    pod = _pod("slice", "a100-node6", "Running")
    pod["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/mig-3g.20gb": "3"}
    free = free_devices(inv, [pod])
    assert free["mig"] == {"3g.20gb": {"total": 16, "requested": 3, "free": 13}}
    assert free["accelerators"]["free"] == 0


def test_inventory_dataclass_round_trips_to_json() -> None:
    inv = NodeInventory(node="x")
    assert json.loads(json.dumps(inv.to_dict()))["node"] == "x"
