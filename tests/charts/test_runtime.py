"""bud_runtime_container: the vLLM server Deployment, its Service and the optional Ingress / Route."""

from __future__ import annotations

import helm_python as helm
import pytest

from . import helpers as h

CHART = "bud_runtime_container"

# What the deploy workflow passes for an 8B model on two H100s, weights already in a PVC.
CUDA = {
    "deploymentId": "dep-7f3a",
    "deviceType": "cuda",
    "replicas": 2,
    "model": {"servedName": "llama-3.1-8b", "path": "meta-llama/Llama-3.1-8B-Instruct"},
    "modelStorage": {"enabled": True, "existingClaim": "llama-models"},
    "engine": {"tensorParallelSize": 2, "maxModelLen": 8192, "gpuMemoryUtilization": 0.9, "maxNumSeqs": 32},
    "gpuProduct": "NVIDIA-H100-80GB-HBM3",
    "huggingface": {"existingSecret": "hf-token"},
    "resources": {"requests": {"cpu": "8", "memory": "40Gi"}, "limits": {"memory": "48Gi"}},
}
VARIANTS = {
    "cpu": {"deviceType": "cpu", "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "40"}]},
    "cuda": CUDA,
    "rocm": {"deviceType": "rocm", "engine": {"tensorParallelSize": 4}},
    "hpu": {"deviceType": "hpu", "engine": {"tensorParallelSize": 8}},
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "llm.example.com",
            "tls": {"enabled": True, "secretName": "llm-tls"},
        }
    },
    "loadbalancer": {"service": {"type": "LoadBalancer"}},
    "route": {"route": {"enabled": True, "host": "llm.apps.example.com"}},
}


def vllm(objs):
    (container,) = h.containers(h.one(objs, "Deployment"))
    return container


def args(objs) -> dict[str, str]:
    return dict(a.lstrip("-").split("=", 1) for a in vllm(objs)["args"] if "=" in a)


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_lints_clean_and_renders_valid_kubernetes(variant):
    values = VARIANTS.get(variant) if variant else None
    assert h.lint(CHART, values) == []
    objs = h.render_objects(CHART, values)
    for obj in h.k8s_native(objs):
        h.validate(obj)
    assert {o["kind"] for o in objs} >= {"Deployment", "Service"}


@pytest.mark.parametrize(
    ("device", "resource", "tp"),
    [("cuda", "nvidia.com/gpu", 2), ("rocm", "amd.com/gpu", 4), ("hpu", "habana.ai/gaudi", 8)],
)
def test_accelerator_count_equals_tensor_parallel_size(device, resource, tp):
    objs = h.render_objects(CHART, {"deviceType": device, "engine": {"tensorParallelSize": tp}})
    resources = vllm(objs)["resources"]
    assert resources["limits"][resource] == tp
    assert resources["requests"][resource] == tp
    assert args(objs)["tensor-parallel-size"] == str(tp)
    tolerations = h.one(objs, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_variant_requests_no_accelerator():
    objs = h.render_objects(CHART, VARIANTS["cpu"])
    resources = vllm(objs)["resources"]
    assert not any("/" in key for part in resources.values() for key in part)
    assert "tolerations" not in h.one(objs, "Deployment")["spec"]["template"]["spec"]
    assert "vllm" in vllm(objs)["image"].split(":")[0]


def test_images_per_device_type():
    images = {
        d: vllm(h.render_objects(CHART, {"deviceType": d}))["image"] for d in ("cpu", "cuda", "rocm", "hpu")
    }
    assert images["cuda"].startswith("vllm/vllm-openai:")
    assert all("vllm" in image.split(":")[0] for image in images.values())
    assert len(set(images.values())) == 4
    override = h.render_objects(CHART, {"image": {"repository": "registry.local/vllm", "tag": "v1"}})
    assert vllm(override)["image"] == "registry.local/vllm:v1"


def test_engine_args_and_model_path():
    objs = h.render_objects(
        CHART, {**CUDA, "engine": {**CUDA["engine"], "extraArgs": ["--enable-prefix-caching"]}}
    )
    assert args(objs) == {
        "model": "/data/models-registry/meta-llama/Llama-3.1-8B-Instruct",
        "served-model-name": "llama-3.1-8b",
        "tensor-parallel-size": "2",
        "max-model-len": "8192",
        "gpu-memory-utilization": "0.9",
        "max-num-seqs": "32",
        "port": "8000",
    }
    assert vllm(objs)["args"][-1] == "--enable-prefix-caching"


def test_node_selection_by_gpu_product_and_extra_selector():
    objs = h.render_objects(CHART, {**CUDA, "nodeSelector": {"kubernetes.io/hostname": "gpu-node-1"}})
    selector = h.one(objs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "kubernetes.io/hostname": "gpu-node-1",
    }


def test_volumes_shm_and_model_pvc():
    objs = h.render_objects(CHART, {**CUDA, "shm": {"sizeLimit": "8Gi"}})
    spec = h.one(objs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in vllm(objs)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes[mounts["/data/models-registry"]]["persistentVolumeClaim"]["claimName"] == "llama-models"


def test_without_model_storage_vllm_gets_the_hub_id():
    objs = h.render_objects(CHART, {"model": {"servedName": "opt", "path": "facebook/opt-125m"}})
    assert args(objs)["model"] == "facebook/opt-125m"
    assert all(m["mountPath"] != "/data/models-registry" for m in vllm(objs)["volumeMounts"])


def test_probes_hit_health_on_the_serving_port():
    container = vllm(h.render_objects(CHART, CUDA))
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # A large model loads for minutes: the startup probe must allow far more than liveness does.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_hf_token_comes_from_a_secret_and_never_appears_literally():
    objs = h.render_objects(CHART, CUDA)
    env = {e["name"]: e for e in vllm(objs)["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert not h.find(objs, "Secret")
    assert not any(s.startswith("hf_") for s in h.walk_strings(objs))
    assert "HF_TOKEN" not in {e["name"] for e in vllm(h.render_objects(CHART))["env"] or []}


@pytest.mark.parametrize(
    "name", ["HF_TOKEN", "hf_token", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "OPENAI_API_KEY"]
)
def test_schema_refuses_credentials_as_plain_env(name):
    with pytest.raises(helm.HelmValuesError, match="env"):
        h.render(CHART, {"env": [{"name": name, "value": "hf_abcdefghijklmnop"}]})


def test_secret_env_uses_secret_key_refs():
    objs = h.render_objects(CHART, {"secretEnv": [{"name": "S3_KEY", "secretName": "s3", "key": "secret"}]})
    env = {e["name"]: e for e in vllm(objs)["env"]}
    assert env["S3_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "secret"}


def test_pods_carry_the_deployment_id_and_service_selects_them():
    objs = h.render_objects(CHART, CUDA)
    deployment = h.one(objs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["budcluster.io/deployment-id"] == "dep-7f3a"
    assert deployment["spec"]["replicas"] == 2
    service = h.one(objs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert (
        h.one(h.render_objects(CHART, VARIANTS["loadbalancer"]), "Service")["spec"]["type"] == "LoadBalancer"
    )


def test_ingress_only_when_enabled():
    assert not h.find(h.render_objects(CHART), "Ingress")
    ingress = h.one(h.render_objects(CHART, VARIANTS["ingress"]), "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-tls"}]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "llm.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "demo", "port": {"name": "http"}}


def test_route_only_when_enabled():
    assert not h.find(h.render_objects(CHART), "Route")
    route = h.one(h.render_objects(CHART, VARIANTS["route"]), "Route")
    assert route["apiVersion"] == "route.openshift.io/v1"
    assert route["spec"]["host"] == "llm.apps.example.com"
    assert route["spec"]["to"] == {"kind": "Service", "name": "demo", "weight": 100}
    assert route["spec"]["port"] == {"targetPort": "http"}
    assert route["spec"]["tls"]["termination"] == "edge"
    assert not h.find(h.render_objects(CHART, VARIANTS["route"]), "Ingress")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"deviceType": "tpu"}, "deviceType"),
        ({"replicas": -1}, "replicas"),
        ({"replicas": "2"}, "replicas"),
        ({"unknownKey": True}, "unknownKey"),
        ({"engine": {"tensorParallelSize": 0}}, "tensorParallelSize"),
        ({"engine": {"gpuMemoryUtilization": 1.5}}, "gpuMemoryUtilization"),
        ({"modelStorage": {"enabled": True}}, "existingClaim"),
        ({"service": {"type": "ExternalName"}}, "type"),
        ({"resources": {"limits": {"nvidia.com/gpu": 4}}}, "nvidia.com/gpu"),
        ({"ingress": {"enabled": True}, "route": {"enabled": True}}, "'not' failed"),
    ],
)
def test_schema_rejects_bad_values(values, needle):
    with pytest.raises(helm.HelmValuesError, match=needle):
        h.render(CHART, values)
