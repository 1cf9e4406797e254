"""The runtime chart's values: the vLLM flags come from one function, the user's own flags are stored on their own
(so a rollback restores them as given), and revisions stored before that split are migrated without changing
what their pods run."""

from __future__ import annotations

import importlib

import yaml

from core import helm
from deployments import charts
from deployments.placement import plan_placement
from tests.placement.test_plan import cpu_node, gpu_node

migration = importlib.import_module("deployments.migrations.0005_runtime_values_engine_args")

USER_FLAGS = ["--enable-prefix-caching", "--max-num-seqs=1024"]


def _runtime(model: str, nodes, **kwargs) -> dict:
    result = plan_placement(
        model, context_len=kwargs.pop("context_len", 4096), concurrency=8, nodes=nodes, **kwargs
    )
    return charts.runtime_values(result)


def _values(runtime: dict, *, source: str = "hf", user=USER_FLAGS, image: str = "") -> dict:
    return charts.runtime_chart_values(
        deployment_id="d-1", config={"source": source}, runtime=runtime, replicas=2, engine_args=user,
        image=image, has_hf_secret=False,
    )  # fmt: skip


def _container_args(values: dict) -> list[str]:
    _, objects = helm.render(charts.RUNTIME_CHART, values, release="chat", namespace="bud-chat")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_pods_run_the_generated_flags_then_the_users_own():
    runtime = _runtime("llama-3.1-405b", [gpu_node("h100-1")], quantization="fp8")
    args = _container_args(_values(runtime))
    assert args == [*charts.vllm_args(runtime, with_storage=True), *USER_FLAGS]
    assert args[0] == "--model=/data/models-registry/meta-llama/Llama-3.1-405B"
    assert "--quantization=fp8" in args and "--tensor-parallel-size=8" in args
    # The engine downloads the model itself without a transfer: --model is the hub id.
    assert _container_args(_values(runtime, source="none"))[0] == "--model=meta-llama/Llama-3.1-405B"


def test_a_revision_records_the_users_settings_as_given():
    runtime = _runtime("llama-3.1-8b", [cpu_node("cpu-1")], device_type="cpu")
    values = _values(runtime, image="registry.local/vllm-cpu:v2")
    assert charts.revision_settings(values) == {
        "replicas": 2,
        "engine_args": USER_FLAGS,
        "image": "registry.local/vllm-cpu:v2",
    }
    assert charts.revision_settings(_values(runtime, user=[])) == {
        "replicas": 2,
        "engine_args": [],
        "image": "",
    }


def _legacy_values(values: dict, runtime: dict, user: list[str]) -> dict:
    """Values as stored before engine.args existed: the chart built --model ... --port itself and extraArgs held
    the generated --dtype (and --quantization / --task) before the user's flags."""
    generated = charts.vllm_args(runtime, with_storage=True)[migration.LEGACY_CHART_FLAGS :]
    engine = {k: v for k, v in values["engine"].items() if k != "args"}
    return {**values, "engine": {**engine, "extraArgs": [*generated, *user]}}


def test_revisions_stored_before_the_split_are_migrated_without_changing_their_pods():
    for runtime in (
        _runtime("llama-3.1-405b", [gpu_node("h100-1")], quantization="fp8"),
        _runtime("bge-large-en-v1.5", [gpu_node("h100-1")], context_len=512),
        _runtime("llama-3.1-8b", [cpu_node("cpu-1")], device_type="cpu"),
    ):
        legacy = _legacy_values(_values(runtime), runtime, USER_FLAGS)
        manifest, _ = helm.render(charts.RUNTIME_CHART, legacy, release="chat", namespace="bud-chat")
        # What the pods of that revision ran: the same as a revision made today.
        assert _container_args(legacy) == _container_args(_values(runtime))

        migrated = migration.split_legacy_engine(legacy, manifest, runtime)
        assert migrated is not None
        assert charts.revision_settings(migrated)["engine_args"] == USER_FLAGS
        again, _ = helm.render(charts.RUNTIME_CHART, migrated, release="chat", namespace="bud-chat")
        assert again == manifest
        assert migration.join_engine(migrated)["engine"]["extraArgs"] == legacy["engine"]["extraArgs"]
        # Values already in the new shape, or whose manifest shows other arguments, are left alone.
        assert migration.split_legacy_engine(migrated, manifest, runtime) is None
        other = yaml.safe_dump({"kind": "Deployment", "spec": {"template": {"spec": {"containers": []}}}})
        assert migration.split_legacy_engine(legacy, other, runtime) is None
