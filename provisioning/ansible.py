"""Running BudCluster's playbooks (``playbooks/``) against a cluster through ansible-runner.

Why ansible-runner and not ``subprocess.run(["ansible-playbook", ...])``: it is the interface AWX itself
uses, hands us every callback event as a dict while the play runs (no stdout parsing), and gives a clean
cancel hook and timeout.

How a run works (AWX-style events):

* A private data directory is made under a fresh ``0700`` temp directory: ``project/`` links to the
  playbooks, ``inventory/hosts`` is ``localhost`` with the local connection and this interpreter (so the
  ``kubernetes`` client is importable by the modules). The kubeconfig is written there as a ``0600`` file
  and handed to the modules as ``K8S_AUTH_KUBECONFIG`` in the child's environment: never as an extravar,
  never on the command line. The whole directory (ansible-runner's artifacts hold full task results and
  the environment) is removed when the run ends, whatever happened.
* Each task result (``runner_on_ok|failed|skipped|unreachable``) becomes one :class:`TaskEvent` (host,
  task, status ``ok|changed|failed|skipped|unreachable``, changed flag, a short message) handed to
  ``on_event`` as it happens. Results are never kept whole: only the module's ``msg``, redacted, travels.
* Every string that leaves this module passes a :class:`~provisioning.redact.Redactor` that knows the
  kubeconfig's token/certificates/keys and any extra secret the caller names.
* ``should_cancel`` is polled by ansible-runner's cancel callback; passing one also keeps ansible-runner
  from installing SIGINT/SIGTERM handlers into the (Celery) process.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings

from .redact import Redactor

logger = logging.getLogger(__name__)

PLAYBOOK_DIR = Path(__file__).resolve().parent.parent / "playbooks"

# Result events, in AWX's naming; the rest (task start, verbose lines, stats) are not stored per task.
_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}

EventCallback = Callable[["TaskEvent"], None]


class PlaybookError(Exception):
    """A playbook could not be run at all (missing file, bad arguments); failures of tasks are results."""


@dataclass(frozen=True)
class TaskEvent:
    """One task's result on one host, as AWX's job events record it."""

    host: str
    task: str
    status: str  # ok | changed | failed | skipped | unreachable
    changed: bool
    message: str = ""
    play: str = ""
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "task": self.task,
            "status": self.status,
            "changed": self.changed,
            "message": self.message,
            "play": self.play,
            "duration": self.duration,
        }


@dataclass
class PlaybookResult:
    playbook: str
    status: str  # successful | failed | timeout | canceled
    rc: int | None
    events: list[TaskEvent] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # set_stats data (e.g. identify_platform's platform)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    @property
    def changed(self) -> int:
        return sum(1 for e in self.events if e.changed)

    @property
    def failures(self) -> list[TaskEvent]:
        return [e for e in self.events if e.status in ("failed", "unreachable")]

    @property
    def unreachable(self) -> bool:
        return any(e.status == "unreachable" for e in self.events) or any(
            _looks_unreachable(e.message) for e in self.failures
        )

    def summary(self) -> str:
        if self.ok:
            return f"{self.playbook}: {len(self.events)} task results, {self.changed} changed"
        first = self.failures[0] if self.failures else None
        detail = f": {first.task}: {first.message}" if first else ""
        return f"{self.playbook} {self.status} (rc {self.rc}){detail}"

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.status] = counts.get(event.status, 0) + 1
        return {
            "playbook": self.playbook,
            "status": self.status,
            "rc": self.rc,
            "tasks": counts,
            "changed": self.changed,
            "data": self.data,
        }


_UNREACHABLE_HINTS = (
    "max retries exceeded",
    "connection refused",
    "timed out",
    "name or service not known",
    "failed to establish a new connection",
    "connection reset",
    "remote end closed connection",
    "no route to host",
)


def _looks_unreachable(message: str) -> bool:
    lowered = message.lower()
    return any(hint in lowered for hint in _UNREACHABLE_HINTS)


def kubeconfig_secrets(kubeconfig: str) -> list[str]:
    """Values inside a kubeconfig that must never be shown: tokens, passwords, keys, certificates."""
    found: list[str] = [kubeconfig]
    try:
        data = yaml.safe_load(kubeconfig) or {}
    except yaml.YAMLError:
        return found
    for user in data.get("users") or []:
        for key, value in ((user or {}).get("user") or {}).items():
            if isinstance(value, str) and key in (
                "token",
                "password",
                "client-key-data",
                "client-certificate-data",
            ):
                found.append(value)
    return found


def _message(res: Mapping[str, Any]) -> str:
    """The short human part of a task result (never the whole result: it may echo anything)."""
    parts = []
    msg = res.get("msg")
    if msg:
        parts.append(str(msg))
    if res.get("skip_reason") and not msg:
        parts.append(str(res["skip_reason"]))
    if res.get("unreachable"):
        parts.append("host unreachable")
    return " ".join(parts)[:2000]


class _EventCollector:
    def __init__(self, playbook: str, redactor: Redactor, on_event: EventCallback | None) -> None:
        self.playbook = playbook
        self.redact = redactor
        self.on_event = on_event
        self.events: list[TaskEvent] = []
        self.stats: dict[str, Any] = {}
        self.data: dict[str, Any] = {}

    def __call__(self, raw: dict[str, Any]) -> bool:
        kind = raw.get("event")
        event_data = raw.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats = {
                key: event_data.get(key) or {}
                for key in ("ok", "changed", "failures", "skipped", "dark", "ignored", "rescued")
            }
            self.data = _redact_tree(event_data.get("artifact_data") or {}, self.redact)
        status = _RESULT_EVENTS.get(kind or "")
        if status is not None:
            res = event_data.get("res") or {}
            changed = bool(res.get("changed")) and status == "ok"
            if status == "ok" and changed:
                status = "changed"
            event = TaskEvent(
                host=str(event_data.get("host", "")),
                task=self.redact(str(event_data.get("task", ""))),
                status=status,
                changed=changed,
                message=self.redact(_message(res)),
                play=self.redact(str(event_data.get("play", ""))),
                duration=event_data.get("duration"),
            )
            self.events.append(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # a failing sink must not abort the play mid-way
                    logger.exception("playbook event callback failed")
        # False: ansible-runner need not write the event to the artifacts directory (it goes away anyway).
        return False


def _redact_tree(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_tree(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(v, redact) for v in value]
    return value


def run_playbook(
    playbook: str,
    *,
    kubeconfig: str,
    extravars: Mapping[str, Any] | None = None,
    secrets: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    on_event: EventCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    playbook_dir: Path | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<playbook>`` against the cluster of ``kubeconfig``; returns the result (never raises
    for failed tasks; raises :class:`PlaybookError` when the playbook cannot be started).

    ``extravars`` must hold no secrets (ansible-runner writes them to a file); pass secrets through ``env``
    (they are added to the redactor) or ``secrets`` (values to redact only).
    """
    import ansible_runner

    directory = playbook_dir or Path(getattr(settings, "PLAYBOOK_DIR", PLAYBOOK_DIR))
    if not (directory / playbook).is_file():
        raise PlaybookError(f"playbook not found: {directory / playbook}")
    redactor = Redactor([*kubeconfig_secrets(kubeconfig), *secrets, *(env or {}).values()])
    limit = float(timeout if timeout is not None else getattr(settings, "PLAYBOOK_TIMEOUT", 600))
    base = Path(tempfile.mkdtemp(prefix="budcluster-ansible-"))
    try:
        base.chmod(0o700)
        private = base / "runner"
        (private / "inventory").mkdir(parents=True)
        (private / "env").mkdir()
        # A copy rather than a link: ansible-runner may write into project/, and the source tree is read-only
        # on some installs. The playbooks are a few kilobytes.
        shutil.copytree(directory, private / "project")
        (private / "inventory" / "hosts").write_text(
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        )
        kubeconfig_path = base / "kubeconfig"
        kubeconfig_path.touch(mode=0o600)
        kubeconfig_path.write_text(kubeconfig)
        bindir = str(Path(sys.executable).parent)
        envvars = {
            "PATH": bindir + ":" + _env_path(),
            "HOME": str(base),
            "K8S_AUTH_KUBECONFIG": str(kubeconfig_path),
            "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(base / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_SYSTEM_WARNINGS": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            **(env or {}),
        }
        collector = _EventCollector(playbook, redactor, on_event)
        cancel = should_cancel or (lambda: False)
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=playbook,
            extravars=dict(extravars or {}),
            envvars=envvars,
            quiet=True,
            event_handler=collector,
            cancel_callback=cancel,
            timeout=int(limit),
            suppress_env_files=True,
        )
        return PlaybookResult(
            playbook=playbook,
            status=str(runner.status),
            rc=runner.rc,
            events=collector.events,
            stats=collector.stats,
            data=collector.data,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _env_path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")
