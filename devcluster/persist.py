"""A devcluster's state directory (`--state-dir`, `DevCluster(state_dir=...)`): the same CA, tokens and objects
after a restart.

Without it a devcluster lives in memory: a restart brings a new CA and new tokens, so every stored kubeconfig
fails with a certificate error, and every object is gone.  With it, a server started again on the same port is
the same API server to its clients: their old kubeconfig verifies and authenticates, resourceVersions keep
counting up from where they were, and a watch resumes from the resourceVersion it had reached.

Layout (the directory is 0700, every file 0600: it holds private keys and bearer tokens):

    ca.crt, ca.key           the CA clients trust (certificate-authority-data of every kubeconfig)
    server.crt, server.key   the serving certificate, reissued from the same CA when it nears expiry or does
                             not name the bind host
    admin-token              the bearer token of the admin API (`/_devcluster/`)
    snapshot.jsonl           a header line, then one line per virtual cluster: its name, token, uid, OpenShift
                             flag, resourceVersion counter, every stored object (CRDs and custom resources
                             included) and the watch history
    journal-<epoch>.jsonl    every change committed since that snapshot, one JSON line each
    lock                     held (flock) by the running server: two servers never share a state directory

Design:
- Write-through journal.  The store calls `StateDir.record` for every committed change, synchronously, before
  watchers or the simulation hear of it and before the HTTP answer is written; the line goes to the kernel with
  one unbuffered write(2).  Lines are appended, never rewritten.
- Snapshots (checkpoints) bound the journal: at start (after loading), when the journal has grown past
  COMPACT_AFTER_BYTES and twice the snapshot's size, and at a graceful stop.  A snapshot is written to a
  temporary file, fsynced and renamed over the old one, so a crash leaves the old or the new one, never half of
  one; it names the journal epoch that follows it, and a journal whose header carries another epoch (left by a
  crash between the rename and the new journal) is ignored, so no change is applied twice.
- Loading reads the snapshot, replays the journal through `VirtualCluster.replay` (rebuilding the watch history
  too), and stops at the first line that does not parse: a torn last line is what a crash mid-write leaves.
- Cost: nothing unless a state directory is given (the store tests one attribute per commit).  With one, each
  committed change costs a JSON encoding of the object and one write(2), all on the server's loop.

What is kept and what is not:
- SIGKILL (or any crash of the process) loses nothing that was committed: every change is in the kernel before it is
  answered.  (If a journal write fails, e.g. a full disk, the error is logged, journaling pauses and the whole state
  is written by the next checkpoint, tried at once: changes in between are lost to a crash.)  A torn final line (a
  kill in the middle of its write) is dropped; that change was not acknowledged.  Work the server had scheduled but
  not done yet is resumed on load: namespaces that were terminating finish terminating.  Not resumed: garbage
  collection of an owner's dependents that was due on the loop iteration after the owner's deletion (a kill inside
  that window leaves the dependents in place).
- A power loss or kernel crash can also lose the journal's tail still in the page cache (the journal is not
  fsynced per change, to stay fast; snapshots are fsynced).
- Never kept (in memory only, in both cases): cluster faults set through the admin API, the simulation's
  pod logs, inference-server state and job faults.  The simulation re-attaches to the restored objects: running
  pods keep running (their Ready/finish timers are re-armed), LoadBalancer Services keep their addresses.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from devcluster import tls
from devcluster.store import VirtualCluster

log = logging.getLogger(__name__)

FORMAT = 1
SNAPSHOT = "snapshot.jsonl"
LOCK = "lock"
# Compact when the journal is larger than this and than twice the last snapshot: big enough that a busy
# simulation does not checkpoint every few seconds, small enough that a restart replays in seconds.
COMPACT_AFTER_BYTES = 64 * 1024 * 1024
# Reissue a certificate this long before it expires, so a long-lived state directory never serves an expired one.
RENEW_BEFORE = datetime.timedelta(days=7)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


class StateDirError(Exception):
    """The state directory cannot be used (locked by another server, unreadable, unknown format)."""


def _write_private(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Replace `path` atomically with `data`, readable by the owner only from the first byte."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _covers(cert: x509.Certificate, host: str) -> bool:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in names.get_values_for_type(x509.DNSName)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


class StateDir:
    """One state directory: the PKI and admin token (`load_pki`), and the clusters' objects (`open`, `start`,
    `record`, `checkpoint`, `close`).  Every method but `load_pki` runs on the server's loop thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._epoch = 0
        self._clusters: Mapping[str, VirtualCluster] | None = None
        self._loop: Any = None
        self._compacting = False
        self._write_failed = False

    # ------------------------------------------------------------------ directory
    def _ensure_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)  # an existing directory is tightened too: it is about to hold keys

    def _file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ PKI and admin token
    def load_pki(self, host: str) -> tuple[tls.Pki, str]:
        """The CA, serving certificate and admin token of this directory, created on first use.

        The CA is kept for as long as it is valid, so kubeconfigs written once keep verifying; the serving
        certificate is reissued from it when it nears expiry or does not name `host`."""
        self._ensure_dir()
        ca = self._load_ca()
        if ca is None:
            ca = tls.Authority.create("devcluster-ca")
            _write_private(self._file("ca.key"), _pem_key(ca.key), sync=True)
            _write_private(self._file("ca.crt"), ca.cert_pem, sync=True)
            log.info("devcluster: new CA in %s", self.path)
        cert_pem, key_pem = self._load_server_cert(ca, host)
        token_path = self._file("admin-token")
        token = token_path.read_text().strip() if token_path.exists() else ""
        if not token:
            token = secrets.token_urlsafe(32)
            _write_private(token_path, (token + "\n").encode(), sync=True)
        return tls.Pki(ca_pem=ca.cert_pem, cert_pem=cert_pem, key_pem=key_pem), token

    def _load_ca(self) -> tls.Authority | None:
        crt, key = self._file("ca.crt"), self._file("ca.key")
        if not (crt.exists() and key.exists()):
            return None
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except ValueError as exc:
            raise StateDirError(f"{self.path}: ca.crt / ca.key cannot be read ({exc})") from None
        if not _fresh(cert):
            log.warning(
                "devcluster: the CA in %s expires on %s: a new one is made (kubeconfigs must be rewritten)",
                self.path,
                cert.not_valid_after_utc.date(),
            )
            return None
        return tls.Authority(key=private, cert=cert)  # type: ignore[arg-type]

    def _load_server_cert(self, ca: tls.Authority, host: str) -> tuple[bytes, bytes]:
        crt, key = self._file("server.crt"), self._file("server.key")
        if crt.exists() and key.exists():
            try:
                cert = x509.load_pem_x509_certificate(crt.read_bytes())
            except ValueError:
                cert = None
            if cert is not None and _fresh(cert) and _covers(cert, host) and _issued_by(cert, ca.cert):
                return crt.read_bytes(), key.read_bytes()
        cert_pem, key_pem = ca.issue("devcluster-apiserver", hosts=[host], server=True)
        _write_private(key, key_pem, sync=True)
        _write_private(crt, cert_pem, sync=True)
        return cert_pem, key_pem

    # ------------------------------------------------------------------ loading
    def open(self) -> dict[str, VirtualCluster]:
        """Take the directory's lock and read the saved clusters, the journal replayed on top (no loop yet:
        the caller sets `loop` and calls `resume()`).  Empty for a new directory."""
        self._ensure_dir()
        fd = os.open(self._file(LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirError(f"{self.path} is in use by another devcluster") from None
        self._lock_fd = fd
        try:
            return self._load()
        except BaseException:
            self._unlock()
            raise

    def _load(self) -> dict[str, VirtualCluster]:
        snapshot = self._file(SNAPSHOT)
        if not snapshot.exists():
            return {}
        states: dict[str, dict] = {}
        with snapshot.open("rb") as fh:
            header = _parse(fh.readline())
            if not header or header.get("format") != FORMAT:
                raise StateDirError(f"{snapshot}: not a devcluster snapshot of format {FORMAT}")
            self._epoch = int(header.get("epoch") or 0)
            for line in fh:
                state = _parse(line)
                if state is None:
                    raise StateDirError(
                        f"{snapshot}: damaged line"
                    )  # renamed into place whole: not a torn write
                states[state["name"]] = state
        self._snapshot_bytes = snapshot.stat().st_size
        clusters = {name: VirtualCluster.from_state(state) for name, state in states.items()}
        replayed = self._replay(clusters)
        if replayed:
            log.info("devcluster: replayed %d change(s) from the journal in %s", replayed, self.path)
        return clusters

    def _replay(self, clusters: dict[str, VirtualCluster]) -> int:
        path = self._journal_file(self._epoch)
        if not path.exists():
            return 0
        count = 0
        good = 0
        with path.open("rb") as fh:
            header = _parse(fh.readline())
            if not header or header.get("epoch") != self._epoch:
                log.warning("devcluster: %s does not follow the snapshot; ignored", path)
                return 0
            good = fh.tell()
            for line in fh:
                record = _parse(line) if line.endswith(b"\n") else None
                if record is None:
                    log.warning(
                        "devcluster: %s ends with %d byte(s) of an unfinished record (a crash mid-write); "
                        "dropped",
                        path,
                        path.stat().st_size - good,
                    )
                    break
                good += len(line)
                vc = clusters.get(record.get("c", ""))
                if vc is None:
                    log.warning("devcluster: journal record for unknown cluster %r skipped", record.get("c"))
                    continue
                vc.replay(record["e"], record["k"], record["o"])
                count += 1
        return count

    def _journal_file(self, epoch: int) -> Path:
        return self._file(f"journal-{epoch}.jsonl")

    # ------------------------------------------------------------------ running
    def start(self, clusters: Mapping[str, VirtualCluster], loop: Any) -> None:
        """Checkpoint `clusters` (the server's live mapping) and journal every change from now on."""
        self._clusters = clusters
        self._loop = loop
        self.checkpoint()
        for vc in clusters.values():
            vc.journal = self.record

    def record(self, vc: VirtualCluster, event_type: str, key: str, obj: dict) -> None:
        """The store's journal hook: one committed change, appended before it is answered."""
        self._append({"c": vc.name, "e": event_type, "k": key, "o": obj})

    def _append(self, record: dict) -> None:
        fd = self._journal_fd
        if fd is None or self._write_failed:
            return
        data = (_encode(record) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            # The change is already in memory and about to be answered: keep serving, stop appending (a journal
            # with a hole would replay wrongly) and write the whole state again as soon as possible.
            log.error("devcluster: cannot append to the journal in %s: %s", self.path, exc)
            self._write_failed = True
            self._schedule_checkpoint()
            return
        self._journal_bytes += len(data)
        if self._journal_bytes > COMPACT_AFTER_BYTES and self._journal_bytes > 2 * self._snapshot_bytes:
            self._schedule_checkpoint()

    def _schedule_checkpoint(self) -> None:
        if self._compacting:
            return
        self._compacting = True
        # Not inside the commit that asked for it: on the next loop iteration, between requests.
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon(self.checkpoint)
        else:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write a snapshot of every cluster and start a new, empty journal (the old one is removed)."""
        clusters = self._clusters or {}
        started = time.monotonic()
        epoch = self._epoch + 1
        header = {
            "format": FORMAT,
            "epoch": epoch,
            "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        parts = [_encode(header).encode(), b"\n"]
        for vc in list(clusters.values()):
            parts.append(_encode(vc.export_state()).encode())
            parts.append(b"\n")
        data = b"".join(parts)
        try:
            _write_private(self._file(SNAPSHOT), data, sync=True)
            _fsync_dir(self.path)
        finally:
            self._compacting = False
        old_fd, old_path = self._journal_fd, self._journal_path
        path = self._journal_file(epoch)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        head = (_encode({"format": FORMAT, "epoch": epoch}) + "\n").encode()
        os.write(fd, head)
        self._epoch, self._journal_fd, self._journal_path = epoch, fd, path
        self._journal_bytes, self._snapshot_bytes = len(head), len(data)
        self._write_failed = False
        if old_fd is not None:
            os.close(old_fd)
        for stale in self.path.glob("journal-*.jsonl"):
            if stale != path:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        if old_path is not None or len(clusters) > 100:
            log.info(
                "devcluster: state checkpoint of %d cluster(s), %.1f MiB in %.2f s",
                len(clusters),
                len(data) / 2**20,
                time.monotonic() - started,
            )

    def close(self) -> None:
        """Graceful stop: a final checkpoint (so the next start replays nothing), then release the directory."""
        try:
            if self._clusters is not None:
                for vc in self._clusters.values():
                    vc.journal = None
                self.checkpoint()
        finally:
            if self._journal_fd is not None:
                os.fsync(self._journal_fd)
                os.close(self._journal_fd)
                self._journal_fd = None
            self._clusters = None
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def _parse(line: bytes) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
