"""Private, throwaway PostgreSQL and Redis instances that a benchmark may stop and start at will.

Outage scenarios (``benchmarks/fault_matrix.py``) restart the database and the broker under a running workflow.
The machine's own PostgreSQL and Redis are shared with everything else running here, so they are never touched:
the benchmark starts its own instances on free loopback ports, in a temporary directory, points
``DATABASE_URL`` / ``CELERY_BROKER_URL`` at them *before* Django is set up (every worker and beat process it starts
inherits them), and removes them at the end.

* PostgreSQL: the 15 binaries (``initdb`` + ``pg_ctl``, ``PRIVATE_PG_BIN`` overrides the directory), trust
  authentication for the ``postgres`` role on 127.0.0.1 only, the socket in the temporary directory. PostgreSQL
  refuses to run as root, so when we are root every command runs as the ``postgres`` OS user (``runuser``) and
  the directory is handed to it. ``stop(mode="fast")`` is a clean restart's first half (clients are disconnected,
  nothing committed is lost); ``mode="immediate"`` is a crash (recovery replays the WAL on the next start).
* Redis: ``redis-server`` with persistence off (``--save '' --appendonly no``), so a restart loses everything it
  held, queued and unacknowledged messages included: the harshest broker restart, which the workflow engine has
  to survive through its database and its reaper.

Usage::

    with private_services() as (pg, broker):
        os.environ["DATABASE_URL"] = pg.url("bench")
        os.environ["CELERY_BROKER_URL"] = broker.url(0)
        ...
        broker.stop(); ...; broker.start()      # same port, empty
        pg.stop(); ...; pg.start()               # same port, same data

A port is found by binding port 0 and closing the socket, so another process could in principle take it before
the server binds it; ``start()`` then fails with the server's log, and a rerun picks another port. A benchmark
killed with SIGKILL leaves its instances running (their directories are named ``budcluster-private-*`` under the
temporary directory, and ``postmaster.pid`` / the Redis pid show which processes to stop).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

PG_BIN = Path(os.environ.get("PRIVATE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
START_TIMEOUT = 60.0


class ServiceError(RuntimeError):
    """A private instance could not be created, started or stopped; the message carries its log's tail."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class PrivatePostgres:
    """One PostgreSQL cluster in its own directory, on its own port; ``start()`` runs ``initdb`` the first time."""

    def __init__(self, port: int | None = None, *, root: Path | None = None, bin_dir: Path = PG_BIN) -> None:
        self.port = port or free_port()
        self.bin_dir = Path(bin_dir)
        self.root = Path(root or tempfile.mkdtemp(prefix="budcluster-private-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", PG_OS_USER, "--", *command]
        # cwd: runuser keeps ours, which the postgres user may not be allowed to read.
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def _initdb(self) -> None:
        if not (self.bin_dir / "initdb").exists():
            raise ServiceError(f"no initdb in {self.bin_dir} (set PRIVATE_PG_BIN to the PostgreSQL binaries)")
        self.root.chmod(0o700)
        if self._as_postgres:
            shutil.chown(self.root, PG_OS_USER, PG_OS_USER)
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed: {done.stderr[-2000:] or done.stdout[-2000:]}")

    def start(self) -> PrivatePostgres:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        if done.returncode != 0:
            raise ServiceError(
                f"PostgreSQL did not start on port {self.port}: {done.stderr}\n{_tail(self.log)}"
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect clients, shut down cleanly; ``immediate``: as if the server had crashed."""
        if not (self.data / "postmaster.pid").exists():
            return
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        if done.returncode != 0 and (self.data / "postmaster.pid").exists():
            raise ServiceError(f"PostgreSQL did not stop: {done.stderr}\n{_tail(self.log)}")

    @property
    def running(self) -> bool:
        return port_open(self.port)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        """Stop (if running) and remove the directory."""
        with suppress(ServiceError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """One ``redis-server`` without persistence: every ``start()`` after a ``stop()`` is an empty broker."""

    def __init__(
        self, port: int | None = None, *, root: Path | None = None, binary: str = "redis-server"
    ) -> None:
        self.port = port or free_port()
        self.root = Path(root or tempfile.mkdtemp(prefix="budcluster-private-redis-"))
        self.binary = binary
        self.log = self.root / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        if self.proc and self.proc.poll() is None:
            return self
        binary = shutil.which(self.binary)
        if binary is None:
            raise ServiceError(f"{self.binary} not found on PATH")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.log), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"redis-server did not start on port {self.port}:\n{_tail(self.log)}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (nothing is saved: persistence is off); SIGKILL if it does not exit within 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_services() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    """Both instances started; stopped and removed on the way out, whatever happened."""
    pg, broker = PrivatePostgres(), PrivateRedis()
    try:
        pg.start()
        broker.start()
        yield pg, broker
    finally:
        broker.close()
        pg.close()
