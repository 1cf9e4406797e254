"""Download a Hugging Face model snapshot into the mounted volume and report progress.

Progress goes into ConfigMap $PROGRESS_CONFIGMAP (keys bytes_done, bytes_total, phase) through the
Kubernetes API with this pod's service account, which may patch that one ConfigMap only. The total
comes from the hub's file metadata (or MODEL_SIZE_BYTES); bytes done is what is on disk, measured
while the download runs in a thread. huggingface_hub resumes partial files, so a retried pod continues
where the last one stopped. Only the standard library is used for the API calls, so the image needs
nothing but Python and the hub client installed below.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

SA_DIR = Path(os.environ.get("SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"))


def install_hub_client() -> None:
    """Install huggingface_hub into scratch space (the image root may be read-only).

    Images that already ship the client (air-gapped clusters) skip the install.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        pass
    else:
        return
    # Scratch space of this short-lived pod only; nothing else runs in it.
    target = Path(os.environ.get("PIP_TARGET_DIR", "/tmp/pylib"))  # noqa: S108
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--target", str(target)]
    if os.environ.get("PIP_INDEX_URL"):
        cmd += ["--index-url", os.environ["PIP_INDEX_URL"]]
    cmd.append(os.environ.get("HUB_PACKAGE", "huggingface_hub"))
    subprocess.run(cmd, check=True, timeout=600)
    sys.path.insert(0, str(target))


class Progress:
    """Best-effort writer of the progress ConfigMap: a failed update never fails the download."""

    def __init__(self) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        if ":" in host:
            host = f"[{host}]"
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        api = os.environ.get("KUBE_API_URL", f"https://{host}:{port}")
        namespace, name = os.environ["POD_NAMESPACE"], os.environ["PROGRESS_CONFIGMAP"]
        self.url = f"{api}/api/v1/namespaces/{namespace}/configmaps/{name}"
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"unsupported API URL {api!r}")
        self.context = None
        if self.url.startswith("https://") and (SA_DIR / "ca.crt").exists():
            self.context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        token_file = Path(os.environ.get("KUBE_TOKEN_FILE", SA_DIR / "token"))
        self.token_file = token_file

    def report(self, phase: str, done: int, total: int) -> None:
        body = json.dumps({"data": {"phase": phase, "bytes_done": str(done), "bytes_total": str(total)}})
        # The URL is checked to be http(s) in __init__.
        request = urllib.request.Request(self.url, data=body.encode(), method="PATCH")  # noqa: S310
        request.add_header("Content-Type", "application/merge-patch+json")
        if self.token_file.exists():
            # Re-read every time: projected service account tokens are rotated by the kubelet.
            request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context):  # noqa: S310
                pass
        except OSError as exc:
            print(f"warning: progress update failed: {exc}", file=sys.stderr)


def bytes_on_disk(root: Path) -> int:
    """Size of the regular files under root, partial downloads included."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                # A partial file may be renamed or removed between listing and stat.
                with contextlib.suppress(OSError):
                    total += os.path.getsize(path)
    return total


def remote_size(repo_id: str, revision: str, token: str | None) -> int:
    """Sum of the repository's file sizes at revision, or MODEL_SIZE_BYTES when the hub cannot tell."""
    known = int(os.environ.get("MODEL_SIZE_BYTES") or 0)
    if known:
        return known
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token)
    return sum(sibling.size or 0 for sibling in info.siblings or [])


def main() -> int:
    repo_id = os.environ["HF_REPO_ID"]
    revision = os.environ.get("HF_REVISION") or "main"
    token = os.environ.get("HF_TOKEN") or None
    dest = Path(os.environ["DEST_DIR"])
    interval = float(os.environ.get("PROGRESS_INTERVAL_SECONDS") or 10)
    progress = Progress()
    dest.mkdir(parents=True, exist_ok=True)

    try:
        install_hub_client()
        total = remote_size(repo_id, revision, token)
    except Exception as exc:  # any failure before the copy is a failed transfer, reported as such
        print(f"preparing the download failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        progress.report("Failed", bytes_on_disk(dest), int(os.environ.get("MODEL_SIZE_BYTES") or 0))
        return 1
    print(f"downloading {repo_id}@{revision} ({total} bytes) to {dest}", flush=True)
    progress.report("Running", bytes_on_disk(dest), total)

    errors: list[BaseException] = []

    def download() -> None:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(dest), token=token)
        except BaseException as exc:  # handed to the main thread, which reports and exits
            errors.append(exc)

    worker = threading.Thread(target=download, name="download", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=interval)
        done = bytes_on_disk(dest)
        progress.report("Running", min(done, total) if total else done, total)

    if errors:
        # The token is never printed: only the exception type and message of the hub client.
        print(f"download failed: {type(errors[0]).__name__}: {errors[0]}", file=sys.stderr)
        progress.report("Failed", bytes_on_disk(dest), total)
        return 1
    done = bytes_on_disk(dest)
    total = total or done
    progress.report("Succeeded", total, total)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
