"""Endpoint probes and benchmarks connect to the address the guard checked, never to a later DNS answer.

The model endpoint's name first resolves to the real model server (127.0.0.1), and to another server (127.0.0.2,
standing for a metadata service or an internal host) on every lookup after that: a DNS-rebinding attack. A
client that checks the name and then connects by name again talks to the second server.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.gateway import GatewayError
from deployments import benchmarking, health
from deployments.catalog import EMBEDDING, GENERATION
from deployments.loadgen import run_benchmark_sync
from deployments.models import Deployment

NAME = "model.rebind.test"
MODEL = "tiny"


class _ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.hits = 0
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _ModelServer

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: dict) -> None:
        self.server.hits += 1
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer({"data": [{"id": MODEL}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        self._answer({"data": [{"embedding": [0.1]}], "choices": [{"text": "hi"}], "usage": usage})


@pytest.fixture
def rebinding(monkeypatch, settings):
    """(real server, rebound server, lookups of NAME): the first lookup of NAME answers 127.0.0.1, later ones
    127.0.0.2, where the other server listens on the same port."""
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True
    rebound = _ModelServer(("127.0.0.2", 0))
    port = rebound.server_address[1]
    real = _ModelServer(("127.0.0.1", port))
    for server in (real, rebound):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    lookups: list[str] = []
    original = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != NAME:
            return original(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield real, rebound, lookups, port
    for server in (real, rebound):
        server.shutdown()
        server.server_close()


def test_the_endpoint_probe_talks_only_to_the_checked_address(rebinding):
    real, rebound, lookups, port = rebinding
    answer = health.probe_endpoint(f"http://{NAME}:{port}", MODEL, GENERATION, timeout=5)
    assert answer["models"] == [MODEL]
    assert real.hits == 2  # /v1/models and one completion
    assert rebound.hits == 0
    assert lookups == [NAME]  # looked up once, by the guard


def test_the_endpoint_probe_refuses_a_redirect_away_from_the_endpoint(settings):
    """A probe follows no redirect (a model server that redirects is not serving)."""
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(GatewayError, match="answered 302"):
            health.probe_endpoint(
                f"http://127.0.0.1:{server.server_address[1]}", MODEL, GENERATION, timeout=5
            )
    finally:
        server.shutdown()
        server.server_close()


def test_a_benchmark_loads_only_the_checked_address(rebinding):
    real, rebound, lookups, port = rebinding
    deployment = Deployment(
        name="pinned",
        endpoint_url=f"http://{NAME}:{port}",
        placement={"runtime": {"served_model_name": MODEL}},
        model_spec={"kind": EMBEDDING},
    )
    options = benchmarking.clean_options({"requests": 6, "concurrency": 3})
    load = benchmarking.load_settings(deployment, options)
    result = run_benchmark_sync(load)
    assert [r.error for r in result.requests if not r.success] == []
    assert len(result.requests) == 6
    assert rebound.hits == 0
    assert real.hits == 6
    assert lookups == [NAME]
    assert load.public_dict()["pinned_address"] == "127.0.0.1"  # stored with the benchmark's settings
