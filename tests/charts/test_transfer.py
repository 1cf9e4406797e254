"""model_transfer: PVC + Job copying weights from S3 or the Hugging Face hub, with progress in a ConfigMap.

Besides the manifests, the Job's programs themselves are run here: the S3 script against stub `aws`
and `curl` commands, the hub script against a stub hub client and a loopback HTTP server standing in
for the Kubernetes API (the real hub and S3 are outside the test's reach).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import helm_python as helm
import pytest

from . import helpers as h

CHART = "model_transfer"
S3 = {
    "source": "s3",
    "s3": {
        "endpoint": "https://minio.storage.svc:9000",
        "bucket": "models",
        "prefix": "llama/8b/",
        "existingSecret": "s3-cred",
    },
    "modelSizeBytes": 16_060_522_240,
    "destinationPath": "meta-llama/Llama-3.1-8B-Instruct",
    "pvc": {"size": "40Gi", "storageClassName": "fast-ssd", "accessModes": ["ReadWriteMany"]},
}
HF = {
    "source": "hf",
    "huggingface": {
        "repoId": "meta-llama/Llama-3.1-8B-Instruct",
        "revision": "0e9e39f",
        "existingSecret": "hf-token",
    },
    "destinationPath": "meta-llama/Llama-3.1-8B-Instruct",
}
FAKE_TOKEN = "hf_testtokenthatmustneverleak123"


def transfer_container(objs):
    (container,) = h.containers(h.one(objs, "Job"))
    return container


def env_of(objs) -> dict[str, dict]:
    return {e["name"]: e for e in transfer_container(objs)["env"]}


@pytest.mark.parametrize("values", [None, S3, HF], ids=["default", "s3", "hf"])
def test_lints_clean_and_renders_valid_kubernetes(values):
    assert h.lint(CHART, values) == []
    for obj in h.k8s_native(h.render_objects(CHART, values)):
        h.validate(obj)


def test_pvc_from_values():
    pvc = h.one(h.render_objects(CHART, S3), "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "demo-models"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "40Gi"}},
    }
    default = h.one(h.render_objects(CHART), "PersistentVolumeClaim")
    assert "storageClassName" not in default["spec"]


def test_existing_claim_is_reused():
    objs = h.render_objects(CHART, {"pvc": {"create": False, "name": "shared-models"}})
    assert not h.find(objs, "PersistentVolumeClaim")
    volumes = h.one(objs, "Job")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared-models"}} in volumes


def test_job_shape():
    objs = h.render_objects(CHART, {**S3, "backoffLimit": 1, "activeDeadlineSeconds": 7200})
    job = h.one(objs, "Job")
    assert job["metadata"]["name"] == "demo-transfer"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "model-transfer"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "model-transfer"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert transfer_container(objs)["image"].startswith("amazon/aws-cli:")
    assert h.containers(h.one(h.render_objects(CHART, HF), "Job"))[0]["image"].startswith("python:")


def test_model_size_is_exported_when_known():
    env = env_of(h.render_objects(CHART, S3))
    assert env["MODEL_SIZE_BYTES"]["value"] == "16060522240"
    assert "MODEL_SIZE_BYTES" not in env_of(h.render_objects(CHART))


def test_progress_configmap_and_least_privilege_role():
    objs = h.render_objects(CHART, {**S3, "jobName": "llama-8b-copy"})
    progress = h.one(objs, "ConfigMap", "llama-8b-copy-progress")
    assert progress["data"] == {"phase": "Pending", "bytes_done": "0", "bytes_total": "16060522240"}
    assert env_of(objs)["PROGRESS_CONFIGMAP"]["value"] == "llama-8b-copy-progress"
    role = h.one(objs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["llama-8b-copy-progress"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = h.one(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-8b-copy", "namespace": "bud-test"}
    ]
    job = h.one(objs, "Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "llama-8b-copy"


def test_credentials_only_by_secret_reference():
    s3_env = env_of(h.render_objects(CHART, S3))
    for name, key in [
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ]:
        assert s3_env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "s3-cred", "key": key}}}
    hf_objs = h.render_objects(CHART, HF)
    assert env_of(hf_objs)["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    for objs in (hf_objs, h.render_objects(CHART, S3)):
        assert not h.find(objs, "Secret")
        assert not any(s.startswith("hf_") for s in h.walk_strings(objs))


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"source": "ftp"}, "source"),
        ({"source": "s3", "s3": {"bucket": "models"}}, "existingSecret"),
        ({"huggingface": {"token": FAKE_TOKEN}}, "token"),
        ({"s3": {"secretAccessKey": "abc"}}, "secretAccessKey"),
        ({"backoffLimit": -1}, "backoffLimit"),
        ({"destinationPath": "../etc"}, "destinationPath"),
        ({"pvc": {"create": False}}, "name"),
        ({"jobName": "x" * 53}, "jobName"),
    ],
)
def test_schema_rejects_bad_values(values, needle):
    with pytest.raises(helm.HelmValuesError, match=needle):
        h.render(CHART, values)


def _script(name: str, values: dict | None = None) -> str:
    objs = h.render_objects(CHART, values)
    return h.one(objs, "ConfigMap", "demo-transfer-scripts")["data"][name]


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_s3_script_reports_progress(tmp_path, fail):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "model.safetensors").write_bytes(b"x" * 3000)
    (bucket / "config.json").write_bytes(b"{}" * 50)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "patches.log"
    # Stub aws: a summarised listing and a sync that copies from the local "bucket" (or fails).
    _stub(
        bin_dir / "aws",
        f"""echo "$@" >> {tmp_path}/aws.log
case "$*" in
  *" ls "*) echo "Total Objects: 2"; echo "   Total Size: 3100" ;;
  *" sync "*) {"exit 7" if fail else f'cp -r {bucket}/. "$DEST_DIR"/'} ;;
esac
""",
    )
    # Stub curl: record the request body and target.
    _stub(
        bin_dir / "curl",
        f"""while [ $# -gt 0 ]; do
  case "$1" in --data) shift; body="$1" ;; -X) shift ;; http*) url="$1" ;; esac; shift
done
echo "$url $body" >> {log}
""",
    )
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "token").write_text("sa-token")
    script = tmp_path / "transfer-s3.sh"
    script.write_text(_script("transfer-s3.sh", S3))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SA_DIR": str(tmp_path / "sa"),
        "DEST_DIR": str(tmp_path / "pvc" / "llama"),
        "S3_BUCKET": "models",
        "S3_PREFIX": "llama/",
        "S3_ENDPOINT": "https://minio.local:9000",
        "POD_NAMESPACE": "bud-x",
        "PROGRESS_CONFIGMAP": "demo-transfer-progress",
        "PROGRESS_INTERVAL_SECONDS": "1",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    result = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    patches = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert {url for url, _ in patches} == {
        "https://10.96.0.1:443/api/v1/namespaces/bud-x/configmaps/demo-transfer-progress"
    }
    data = [json.loads(body)["data"] for _, body in patches]
    assert data[0]["phase"] == "Running" and data[0]["bytes_total"] == "3100"
    assert "--endpoint-url https://minio.local:9000" in (tmp_path / "aws.log").read_text()
    if fail:
        assert result.returncode == 7
        assert data[-1]["phase"] == "Failed"
    else:
        assert result.returncode == 0, result.stderr
        assert data[-1] == {"phase": "Succeeded", "bytes_done": "3100", "bytes_total": "3100"}
        assert (tmp_path / "pvc" / "llama" / "model.safetensors").stat().st_size == 3000


FAKE_HUB = """
import os
from pathlib import Path
from types import SimpleNamespace

FILES = {"config.json": 120, "model-00001-of-00002.safetensors": 5000, "model-00002-of-00002.safetensors": 2500}


class HfApi:
    def model_info(self, repo_id, revision=None, files_metadata=False, token=None):
        assert files_metadata and revision == "0e9e39f"
        Path(os.environ["SEEN_TOKEN_FILE"]).write_text(token or "")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=k, size=v) for k, v in FILES.items()])


def snapshot_download(repo_id, revision, local_dir, token=None):
    if os.environ.get("FAIL_DOWNLOAD"):
        raise RuntimeError("401 Client Error for url https://huggingface.co/api/models/" + repo_id)
    for name, size in FILES.items():
        Path(local_dir, name).write_bytes(b"w" * size)
    return local_dir
"""


class _ApiServer(HTTPServer):
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict, str]] = []

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.patches.append((self.path, json.loads(body), self.headers.get("Authorization", "")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def api_server():
    server = _ApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_hf_script_reports_progress_and_keeps_the_token_secret(tmp_path, api_server, fail):
    hub = tmp_path / "site" / "huggingface_hub"
    hub.mkdir(parents=True)
    (hub / "__init__.py").write_text(FAKE_HUB)
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "token").write_text("sa-token")
    script = tmp_path / "transfer_hf.py"
    script.write_text(_script("transfer_hf.py", HF))
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(tmp_path / "site"),
        "SA_DIR": str(tmp_path / "sa"),
        "KUBE_API_URL": f"http://127.0.0.1:{api_server.server_port}",
        "POD_NAMESPACE": "bud-x",
        "PROGRESS_CONFIGMAP": "demo-transfer-progress",
        "PROGRESS_INTERVAL_SECONDS": "0.2",
        "DEST_DIR": str(tmp_path / "pvc" / "model"),
        "HF_REPO_ID": "meta-llama/Llama-3.1-8B-Instruct",
        "HF_REVISION": "0e9e39f",
        "HF_TOKEN": FAKE_TOKEN,
        "SEEN_TOKEN_FILE": str(tmp_path / "seen-token"),
    }
    if fail:
        env["FAIL_DOWNLOAD"] = "1"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert (tmp_path / "seen-token").read_text() == FAKE_TOKEN, "token not passed to the hub client"
    assert FAKE_TOKEN not in result.stdout + result.stderr
    paths = {path for path, _, _ in api_server.patches}
    assert paths == {"/api/v1/namespaces/bud-x/configmaps/demo-transfer-progress"}
    assert {auth for _, _, auth in api_server.patches} == {"Bearer sa-token"}
    data = [body["data"] for _, body, _ in api_server.patches]
    assert data[0] == {"phase": "Running", "bytes_done": "0", "bytes_total": "7620"}
    if fail:
        assert result.returncode == 1
        assert data[-1]["phase"] == "Failed"
        assert "401 Client Error" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert data[-1] == {"phase": "Succeeded", "bytes_done": "7620", "bytes_total": "7620"}
        assert all(int(d["bytes_done"]) <= 7620 for d in data)
