"""The inference simulator: OpenAI-compatible answers, exact token accounting, deterministic faults, and
reachability through a LoadBalancer address and the API server's service proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client

from devcluster.sim.inference import InferenceServer, Latency, create_app, model_params_b, parse_engine_args
from devcluster.sim.testing import https_context, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nodes"

pytest_plugins = ["tests.devcluster.sim_fixtures"]


def run(server: InferenceServer, body: Callable[[TestClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(server))) as http:
            return await body(http)

    return asyncio.run(main())


def fast_server(**kw: Any) -> InferenceServer:
    return InferenceServer(
        model="org/Tiny-1B", served_names=["tiny"], latency=Latency(ttft_fixed_ms=1, itl_ms=1), **kw
    )


def sse_events(raw: str) -> list[Any]:
    out = []
    for line in raw.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_health_and_unknown_model():
    async def body(http: TestClient) -> tuple:
        models = await (await http.get("/v1/models")).json()
        health = (await http.get("/health")).status
        wrong = await http.post("/v1/completions", json={"model": "other", "prompt": "x"})
        return models, health, wrong.status, await wrong.json()

    models, health, status, err = run(fast_server(), body)
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["root"] == "org/Tiny-1B"
    assert health == 200
    assert status == 404 and err["error"]["type"] == "NotFoundError"


def test_completion_returns_exactly_max_tokens_with_exact_usage():
    async def body(http: TestClient) -> dict:
        r = await http.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Hello, world!", "max_tokens": 7}
        )
        return await r.json()

    out = run(fast_server(), body)
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert len(out["choices"][0]["text"].split()) == 7
    assert out["choices"][0]["finish_reason"] == "length"


def test_chat_stream_sends_one_token_per_chunk_and_usage_last():
    async def body(http: TestClient) -> str:
        r = await http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 5,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return await r.text()

    events = sse_events(run(fast_server(), body))
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert len(chunks) == 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(len(c["choices"][0]["delta"]["content"].split()) == 1 for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["prompt_tokens"] == 4  # "user: Say hi" -> user, :, Say, hi


def test_fail_rate_fails_an_exact_share_of_requests():
    async def body(http: TestClient) -> list[int]:
        codes = []
        for _ in range(50):
            r = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
            codes.append(r.status)
            if r.status == 500:
                assert (await r.json())["error"]["type"] == "InternalServerError"
        return codes

    codes = run(fast_server(fail_rate=0.1), body)
    assert codes.count(500) == 5
    assert [i + 1 for i, c in enumerate(codes) if c == 500] == [10, 20, 30, 40, 50]


def test_stall_stops_the_stream_without_done():
    async def body(http: TestClient) -> list[Any]:
        r = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 10, "stream": True})
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(0.5):
                async for line in r.content:
                    lines.append(line)
        except TimeoutError:
            pass
        return sse_events(b"".join(lines).decode())

    events = run(fast_server(stall_after_tokens=3), body)
    assert len(events) == 3 and "[DONE]" not in events


def test_embeddings_are_deterministic_unit_vectors_and_metrics_count():
    async def body(http: TestClient) -> tuple:
        a = await (await http.post("/v1/embeddings", json={"input": ["alpha", "beta"]})).json()
        b = await (await http.post("/v1/embeddings", json={"input": "alpha"})).json()
        metrics = await (await http.get("/metrics")).text()
        return a, b, metrics

    a, b, metrics = run(fast_server(embedding_dim=16), body)
    assert a["data"][0]["embedding"] == b["data"][0]["embedding"]
    assert a["data"][0]["embedding"] != a["data"][1]["embedding"]
    assert abs(sum(v * v for v in a["data"][1]["embedding"]) - 1.0) < 1e-9
    assert a["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert 'vllm:prompt_tokens_total{model_name="tiny"} 3' in metrics
    assert 'vllm:request_success_total{finished_reason="length",model_name="tiny"} 2' in metrics


def test_latency_formula_follows_model_size_and_hardware():
    assert model_params_b("meta-llama/Llama-3.1-70B-Instruct") == 70
    assert model_params_b("mistralai/Mixtral-8x7B-v0.1") == 56
    assert model_params_b("facebook/opt-125m") == 0.125
    h100 = {"tflops": 989, "bandwidth_gbs": 3350}
    l4 = {"tflops": 121, "bandwidth_gbs": 300}
    small, big = Latency.model(8, 2, h100, 1), Latency.model(70, 2, h100, 1)
    assert big.itl_ms > small.itl_ms
    assert Latency.model(8, 2, l4, 1).itl_ms > small.itl_ms
    assert Latency.model(70, 2, h100, 4).itl_ms < big.itl_ms
    assert small.ttft_ms(2000) > small.ttft_ms(10)
    fixed = Latency.model(8, 2, h100, 1, ttft_ms=120, itl_ms=15)
    assert (fixed.ttft_ms(5000), fixed.itl_ms) == (120, 15)
    args = parse_engine_args(
        ["--model=org/M-7B", "--served-model-name", "a", "b", "--tensor-parallel-size", "2"]
    )
    assert args == {"model": "org/M-7B", "served-model-name": ["a", "b"], "tensor-parallel-size": "2"}
    assert parse_engine_args(["vllm serve org/X-1B --max-model-len 2048"])["max-model-len"] == "2048"


def test_nodes_from_files_serve_at_the_speed_of_their_gpu_product(tmp_path):
    """A Node captured from a real cluster (GFD labels already on it) gets its product's device class, so an
    8B model on an H100 node answers at H100 speed rather than at the CPU fallback's."""
    import yaml

    from devcluster.sim.hardware import DEFAULT_CPU_PERF, device_perf
    from devcluster.sim.presets import HARDWARE_KEY, load_nodes

    (h100,) = load_nodes(str(FIXTURES / "h100-xe9680.yaml"))
    perf = device_perf(h100[HARDWARE_KEY], accelerated=True)
    assert perf == {"tflops": 989, "bandwidth_gbs": 3350}
    assert Latency.model(8, 2, perf, 1).itl_ms < 10  # 8B bf16 on one H100: ~9 ms per token

    unknown = yaml.safe_load((FIXTURES / "h100-xe9680.yaml").read_text())
    unknown["metadata"]["labels"]["nvidia.com/gpu.product"] = "Some-Future-GPU"
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(unknown))
    (node,) = load_nodes(str(path))
    assert device_perf(node[HARDWARE_KEY], accelerated=True) == DEFAULT_CPU_PERF


# ------------------------------------------------------------------------------------ inside the cluster


def vllm_deployment(name: str) -> dict:
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "args": [
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--served-model-name",
            name,
            "--port",
            "8000",
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": [{"name": "DEVCLUSTER_TTFT_MS", "value": "5"}, {"name": "DEVCLUSTER_ITL_MS", "value": "2"}],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        },
    }


def test_endpoint_answers_through_load_balancer_ip_and_service_proxy(gpu_cluster, apps, core, ns):
    apps.create_namespaced_deployment(ns, vllm_deployment("llm"))
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "llm"},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "llm"},
                "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
            },
        },
    )
    svc = wait_for(lambda: (s := core.read_namespaced_service("llm", ns)).status.load_balancer.ingress and s)
    ip = svc.status.load_balancer.ingress[0].ip
    assert ip.startswith("127.0.1.")
    wait_for(lambda: apps.read_namespaced_deployment("llm", ns).status.ready_replicas == 1)
    models = wait_for(lambda: _get_json(f"http://{ip}:8000/v1/models"))
    assert models["data"][0]["id"] == "llm"

    proxy = f"{gpu_cluster.cluster_url()}/api/v1/namespaces/{ns}/services/llm:http/proxy/v1/chat/completions"
    headers = {"Authorization": f"Bearer {gpu_cluster.token()}"}
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(verify=https_context(gpu_cluster.ca_pem), timeout=10) as http:
        r = http.post(proxy, json=body, headers=headers)
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1] == "[DONE]" and len(events) == 6 + 2
        assert events[-2]["usage"]["completion_tokens"] == 6
        missing = http.get(proxy.replace("/llm:http/", "/nope/"), headers=headers)
        assert missing.status_code == 404 and missing.json()["kind"] == "Status"
    lb = httpx.post(
        f"http://{ip}:8000/v1/completions", json={"model": "llm", "prompt": "a b c", "max_tokens": 3}
    )
    assert lb.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    pod = core.list_namespaced_pod(ns, label_selector="app=llm").items[0].metadata.name
    assert "vLLM API server" in core.read_namespaced_pod_log(pod, ns)


def test_ingress_gets_the_load_balancer_address_and_routes_by_host(kube_api, apps, core, ns):
    apps.create_namespaced_deployment(ns, vllm_deployment("chat"))
    core.create_namespaced_service(
        ns, {"metadata": {"name": "chat"}, "spec": {"selector": {"app": "chat"}, "ports": [{"port": 8000}]}}
    )
    host = f"{ns}.apps.devcluster.local"
    rule = {
        "host": host,
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "chat", "port": {"number": 8000}}},
                }
            ]
        },
    }
    client.NetworkingV1Api(kube_api).create_namespaced_ingress(
        ns, {"metadata": {"name": "chat"}, "spec": {"rules": [rule]}}
    )
    ing = wait_for(
        lambda: (
            i := client.NetworkingV1Api(kube_api).read_namespaced_ingress("chat", ns)
        ).status.load_balancer.ingress
        and i
    )
    ip = ing.status.load_balancer.ingress[0].ip
    assert ip.startswith("127.0.1.")
    models = wait_for(lambda: _get_json(f"http://{ip}/v1/models", headers={"Host": host}))
    assert models["data"][0]["id"] == "chat"
    other = httpx.get(f"http://{ip}/v1/models", headers={"Host": "unknown.example"}, timeout=5)
    assert other.status_code == 404


def test_service_without_ready_pods_answers_503_through_proxy(gpu_cluster, core, ns):
    core.create_namespaced_service(
        ns, {"metadata": {"name": "idle"}, "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]}}
    )
    url = f"{gpu_cluster.cluster_url()}/api/v1/namespaces/{ns}/services/idle:80/proxy/health"
    r = httpx.get(
        url,
        verify=https_context(gpu_cluster.ca_pem),
        headers={"Authorization": f"Bearer {gpu_cluster.token()}"},
    )
    assert r.status_code == 503
    assert r.json()["message"] == 'no endpoints available for service "idle"'


def _get_json(url: str, headers: dict | None = None) -> Any:
    try:
        r = httpx.get(url, timeout=2, headers=headers)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_load_balancers_of_two_clusters_get_distinct_addresses():
    from devcluster import sim
    from devcluster.harness import DevCluster
    from devcluster.testing import kube_client
    from tests.devcluster.sim_fixtures import FAST

    dc = DevCluster(nodes="cpu-small", clusters=2, sim_config=FAST).start()
    try:
        ips = {}
        for name in dc.names:
            api = kube_client(dc, name)
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            dep = vllm_deployment(f"model-{name}")
            dep["spec"]["template"]["spec"]["containers"][0]["resources"] = {}
            apps.create_namespaced_deployment("default", dep)
            core.create_namespaced_service(
                "default",
                {
                    "metadata": {"name": "llm"},
                    "spec": {
                        "type": "LoadBalancer",
                        "selector": {"app": f"model-{name}"},
                        "ports": [{"port": 8000}],
                    },
                },
            )
            svc = wait_for(
                lambda c=core: (s := c.read_namespaced_service("llm", "default")).status.load_balancer.ingress
                and s
            )
            ips[name] = svc.status.load_balancer.ingress[0].ip
        assert len(set(ips.values())) == 2
        for name, ip in ips.items():
            models = wait_for(lambda ip=ip: _get_json(f"http://{ip}:8000/v1/models"))
            assert models["data"][0]["id"] == f"model-{name}"
    finally:
        dc.call(sim.shutdown)
        dc.stop()
