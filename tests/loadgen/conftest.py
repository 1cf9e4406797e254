"""Server fixtures: the test SSE server and the devcluster inference simulator, each in its own process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy within {deadline_s} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sse_server() -> Iterator[Callable[..., str]]:
    """Factory: sse_server(ttft_ms=100, itl_ms=10, ...) -> base URL; one process per option set per module."""
    procs: dict[tuple, tuple[subprocess.Popen, str]] = {}

    def start(**opts: object) -> str:
        key = tuple(sorted(opts.items()))
        if key in procs:
            return procs[key][1]
        argv = [sys.executable, "-m", "tests.loadgen.sse_server", "--lifetime", "300"]
        for name, value in opts.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            _stop(proc)
            raise RuntimeError(f"test server did not start: {line!r}")
        scheme = "https" if opts.get("tls_dir") else "http"
        url = f"{scheme}://127.0.0.1:{int(line.split()[1])}"
        procs[key] = (proc, url)
        if scheme == "http":
            _wait_healthy(url, proc)
        return url

    yield start
    for proc, _url in procs.values():
        _stop(proc)


@pytest.fixture(scope="module")
def simulator() -> Iterator[Callable[..., str]]:
    """Factory: the devcluster inference simulator standalone (`python -m devcluster.sim.inference`)."""
    procs: dict[tuple, tuple[subprocess.Popen, str]] = {}

    def start(**opts: object) -> str:
        key = tuple(sorted(opts.items()))
        if key in procs:
            return procs[key][1]
        port = _free_port()
        argv = [
            sys.executable,
            "-m",
            "devcluster.sim.inference",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            "sim-model",
            "--max-num-seqs",
            "1024",
        ]
        for name, value in opts.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        procs[key] = (proc, url)
        _wait_healthy(url, proc)
        return url

    def pid(url: str) -> int:
        return next(proc.pid for proc, u in procs.values() if u == url)

    start.pid = pid  # type: ignore[attr-defined]
    yield start
    for proc, _url in procs.values():
        _stop(proc)
