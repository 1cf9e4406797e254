"""Health probes of many API servers at once: one bounded ``GET /version`` per cluster, on an event loop.

The health sweep asks every cluster one question, "do you answer?", once a minute. Through the cluster gateway
that cost a thread, a kubeconfig decryption and YAML parse, a host lookup and a new TLS connection per cluster;
at fleet scale the per-probe work, not the network, set the sweep's length. Here:

* **One event loop per process** (``core.sweep.run_on_sweep_loop``) runs all probes of a sweep as coroutines, so
  hundreds can be in flight without a thread each, and a probe that passes its deadline is cancelled, its
  connection aborted: a hostile cluster (dripping headers or body, a stalled or dripped TLS handshake, an
  endless stream) costs exactly its ``timeout`` and no worker thread outlives it.
* **Decrypted kubeconfigs are cached per process, keyed by the SHA-256 of their ciphertext**
  (:class:`ProbeTargets`, bounded LRU, ``CLUSTER_HEALTH_KUBECONFIG_CACHE`` entries). Encryption uses a random
  nonce, so a replaced or re-encrypted kubeconfig has a new ciphertext and is decrypted afresh: a rotated
  credential is never probed with the old one. Only what a probe needs is kept (server, token, TLS material), in
  memory, never written anywhere; a cache miss decrypts once.
* **Connections are kept alive between probes and sweeps** (bounded: ``CLUSTER_HEALTH_KEEPALIVE`` idle
  connections per process, each dropped after ``KEEPALIVE_IDLE_SECONDS`` unused). A connection is reused only
  for the same pinned IP, port, TLS server name and TLS material (CA, skip-verify flag, client certificate and
  key): a connection authenticated with one cluster's client certificate is never used for another's, and one
  verified against one CA never serves a kubeconfig trusting another. Bearer tokens and basic credentials travel
  in each request, as client-go's shared transports do. Two kubeconfigs pointing at one API server (the
  devcluster's virtual clusters; a cluster registered twice under different credentials) thus share connections;
  a fleet of distinct servers keeps one per cluster while it fits the bound. The bound is what memory allows: an
  idle TLS connection costs about 0.37 MiB here (most of it asyncio's 256 KiB TLS read buffer), so the default
  256 is ~95 MiB at most in the process that ran the last sweep; past the bound, probes connect afresh.
* **The address guard runs on every probe** (``core.netguard.check_host_at_connect``): the IP it returns is part
  of the connection's key, so a name re-pointed since the last sweep, or a guard setting changed, is honoured
  before any pooled connection is touched. Names are resolved on a thread (``getaddrinfo`` blocks); IP
  literals, the common case, are judged inline.
* **TLS is verified as the kubeconfig says**: the gateway's own context builder (``ClusterGateway._ssl_context``),
  contexts cached per TLS material (building one parses the CA). The TLS server name is the kubeconfig's host.
* **Answers are bounded**: HTTP/1.1 parsed by ``h11`` (the parser under httpx; it caps the header block), a body
  cap of ``GATEWAY_MAX_RESPONSE_BYTES`` (a declared length above it is refused unread), ``identity`` encoding
  only (a compressed answer that was not asked for is refused rather than inflated), redirects never followed.
  Errors read as the gateway's do, so an operator sees one vocabulary whichever path failed; no message carries
  a token, key or kubeconfig.

A pooled connection the server has since closed fails before any answer arrives; the probe then retries once
on a new connection within what is left of its deadline (an idempotent GET, as every HTTP client does).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import ssl
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import yaml

from core import crypto
from core.conf import setting

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_KUBECONFIG_CACHE = 10_000
DEFAULT_KEEPALIVE = 256
# An idle connection is dropped after this long unused. Two beat periods (60 s each) keep a sweep's connections
# for the next one; anything longer only holds sockets for clusters that left the fleet.
KEEPALIVE_IDLE_SECONDS = 130.0
_READ_CHUNK = 64 * 1024
_ERROR_BODY_BYTES = 64 * 1024  # an error Status is small; no more of it is read (as the gateway does)
_SSL_CONTEXTS_MAX = 1024
_WHERE = "GET /version"

# Outcomes: (True, "") answered; (False, why) did not; (None, why) BudCluster's own address guard refused the
# server, so nothing was asked of it (no verdict on the cluster).
Outcome = tuple[bool | None, str]


class ProbeRefused(Exception):
    """The kubeconfig cannot be probed (undecryptable, malformed); the message is safe to show."""


@dataclass(frozen=True, eq=False)
class ProbeTarget:
    """What one probe needs from a kubeconfig. Holds a credential: kept in memory only, never logged (the
    default ``repr`` is replaced so that a traceback with locals shows no token)."""

    server: str  # as the kubeconfig writes it, for messages
    host: str  # lower-case, no brackets: judged by the guard, the TLS server name
    port: int
    path: str  # the server URL's path (no trailing slash)
    host_header: str
    authorization: str | None
    tls_cluster: dict  # certificate-authority-data / insecure-skip-tls-verify
    tls_user: dict  # client-certificate-data / client-key-data
    tls_key: str  # digest of the TLS material: part of a pooled connection's key

    def __repr__(self) -> str:
        return f"ProbeTarget({self.server})"


def target_from_kubeconfig(kubeconfig: dict) -> ProbeTarget:
    """The probe target of a validated kubeconfig (its current context, as the gateway picks it)."""
    try:
        contexts = {c["name"]: c["context"] for c in kubeconfig.get("contexts", [])}
        context = contexts.get(kubeconfig.get("current-context")) or next(iter(contexts.values()))
        cluster = next(c["cluster"] for c in kubeconfig["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in kubeconfig["users"] if u["name"] == context["user"])
        server = str(cluster["server"]).rstrip("/")
        url = urlsplit(server)
        port = url.port or 443
    except (KeyError, StopIteration, TypeError, AttributeError, ValueError):
        raise ProbeRefused("the stored kubeconfig lacks its current context, cluster or user") from None
    if url.scheme != "https" or not url.hostname:
        raise ProbeRefused("the stored kubeconfig's server is not an https URL")
    authorization = None
    if user.get("token"):
        authorization = f"Bearer {user['token']}"
    elif user.get("username") and user.get("password"):
        raw = f"{user['username']}:{user['password']}".encode()
        authorization = "Basic " + base64.b64encode(raw).decode()
    tls_cluster = {
        k: cluster[k] for k in ("certificate-authority-data", "insecure-skip-tls-verify") if cluster.get(k)
    }
    tls_user = {k: user[k] for k in ("client-certificate-data", "client-key-data") if user.get(k)}
    material = json.dumps([tls_cluster, tls_user], sort_keys=True, default=str).encode()
    return ProbeTarget(
        server=server,
        host=url.hostname.lower().rstrip("."),
        port=port,
        path=url.path.rstrip("/"),
        host_header=url.netloc.rsplit("@", 1)[-1],
        authorization=authorization,
        tls_cluster=tls_cluster,
        tls_user=tls_user,
        tls_key=hashlib.sha256(material).hexdigest(),
    )


class ProbeTargets:
    """Per-process LRU of probe targets keyed by the SHA-256 of the kubeconfig's ciphertext (see the module
    docstring); thread-safe. ``size`` 0 turns the cache off (every probe decrypts)."""

    def __init__(self, size: int | None = None) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, ProbeTarget] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        if self._size is not None:
            return self._size
        return int(setting("CLUSTER_HEALTH_KUBECONFIG_CACHE", DEFAULT_KUBECONFIG_CACHE))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, ciphertext: str, *, context: str) -> ProbeTarget:
        """The target for an encrypted kubeconfig (``context``: the encrypted field's AAD context). Raises
        :class:`ProbeRefused`."""
        if not ciphertext:
            raise ProbeRefused("the cluster has no kubeconfig")
        key = hashlib.sha256(ciphertext.encode()).digest()
        with self._lock:
            target = self._entries.get(key)
            if target is not None:
                self._entries.move_to_end(key)
                return target
        try:
            text = crypto.decrypt(ciphertext, context=context)
        except crypto.CryptoError as exc:
            raise ProbeRefused(f"the stored kubeconfig cannot be decrypted: {exc}") from None
        try:
            # Our own normalized dump (validated on the way in), so libyaml's safe loader is fine.
            kubeconfig = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            raise ProbeRefused("the stored kubeconfig is not valid YAML") from None
        if not isinstance(kubeconfig, dict):
            raise ProbeRefused("the stored kubeconfig is not a mapping")
        target = target_from_kubeconfig(kubeconfig)
        size = self.size
        if size > 0:
            with self._lock:
                self._entries[key] = target
                self._entries.move_to_end(key)
                while len(self._entries) > size:
                    self._entries.popitem(last=False)
        return target


targets = ProbeTargets()


# --- TLS contexts ----------------------------------------------------------------------------------------------

_ssl_contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
_ssl_lock = threading.Lock()


def _ssl_context(target: ProbeTarget) -> ssl.SSLContext:
    """The kubeconfig's TLS verification, built by the gateway's own rules, cached per TLS material."""
    from core.gateway import ClusterGateway

    with _ssl_lock:
        ctx = _ssl_contexts.get(target.tls_key)
        if ctx is not None:
            _ssl_contexts.move_to_end(target.tls_key)
            return ctx
    ctx = ClusterGateway._ssl_context(target.tls_cluster, target.tls_user)
    with _ssl_lock:
        _ssl_contexts[target.tls_key] = ctx
        while len(_ssl_contexts) > _SSL_CONTEXTS_MAX:
            _ssl_contexts.popitem(last=False)
    return ctx


# --- kept-alive connections ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
    used: float = 0.0
    reused: bool = False

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def abort(self) -> None:
        # abort, not close: no waiting for a TLS close_notify exchange with a server that may never answer.
        self.writer.transport.abort()


class ConnectionPool:
    """Idle connections of one event loop, at most ``limit`` (``CLUSTER_HEALTH_KEEPALIVE``) in all, each kept at
    most ``KEEPALIVE_IDLE_SECONDS``. Only touched from its loop's thread."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._idle: OrderedDict[tuple, deque[_Connection]] = OrderedDict()
        self._count = 0
        self.opened = 0  # connections opened through this pool (the benchmark and the tests read it)

    @property
    def limit(self) -> int:
        if self._limit is not None:
            return self._limit
        return int(setting("CLUSTER_HEALTH_KEEPALIVE", DEFAULT_KEEPALIVE))

    def __len__(self) -> int:
        return self._count

    def take(self, key: tuple) -> _Connection | None:
        if self._count and self.limit <= 0:  # keep-alive turned off since: nothing kept is used
            self.clear()
        queue = self._idle.get(key)
        now = time.monotonic()
        while queue:
            conn = queue.pop()  # the most recently used: the likeliest to be still open
            self._count -= 1
            if conn.usable() and now - conn.used < KEEPALIVE_IDLE_SECONDS:
                if not queue:
                    del self._idle[key]
                conn.reused = True
                return conn
            conn.abort()
        self._idle.pop(key, None)
        return None

    def give(self, key: tuple, conn: _Connection) -> None:
        limit = self.limit
        if limit <= 0 or not conn.usable():
            conn.abort()
            return
        conn.used = time.monotonic()
        self._idle.setdefault(key, deque()).append(conn)
        self._idle.move_to_end(key)
        self._count += 1
        while self._count > limit:  # drop from the least recently used key
            oldest = next(iter(self._idle))
            queue = self._idle[oldest]
            queue.popleft().abort()
            self._count -= 1
            if not queue:
                del self._idle[oldest]

    def prune(self) -> None:
        """Drop connections idle too long or closed by their server."""
        now = time.monotonic()
        for key in list(self._idle):
            queue = self._idle[key]
            keep = deque(c for c in queue if c.usable() and now - c.used < KEEPALIVE_IDLE_SECONDS)
            for conn in queue:
                if conn not in keep:
                    conn.abort()
            self._count -= len(queue) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def clear(self) -> None:
        for queue in self._idle.values():
            for conn in queue:
                conn.abort()
        self._idle.clear()
        self._count = 0


_PRUNE_EVERY = 30.0


def connection_pool() -> ConnectionPool:
    """This process's pool of probe connections; lives on the sweep loop (call from code running on it)."""
    from core.sweep import loop_local

    def make() -> ConnectionPool:
        pool = ConnectionPool()
        loop = asyncio.get_running_loop()

        def prune() -> None:
            pool.prune()
            loop.call_later(_PRUNE_EVERY, prune)

        loop.call_later(_PRUNE_EVERY, prune)
        return pool

    return loop_local("probe-connections", make)


def pool_stats() -> dict[str, int]:
    """``opened``: connections this process's probes have opened; ``idle``: kept alive now."""
    from core.sweep import run_on_sweep_loop

    async def read() -> dict[str, int]:
        pool = connection_pool()
        return {"opened": pool.opened, "idle": len(pool)}

    return run_on_sweep_loop(read())


def close_idle_connections() -> None:
    """Close every kept-alive probe connection of this process (the next probes connect afresh)."""
    from core.sweep import run_on_sweep_loop

    async def clear() -> None:
        connection_pool().clear()

    run_on_sweep_loop(clear())


# --- the probe ------------------------------------------------------------------------------------------------


class _Failed(Exception):
    """The probe's verdict: the API server did not answer well (message safe to show)."""


class _Stale(Exception):
    """A reused connection ended before any answer: its server closed it meanwhile (retry on a new one)."""


async def _pin(target: ProbeTarget, timeout: float) -> str:
    """The address guard at connect time: the IP to connect to. Literals are judged inline; names resolve on a
    thread (``getaddrinfo`` blocks) under the guard's own lookup timeout."""
    from core.netguard import check_host_at_connect

    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        pass  # a name (or an odd numeric spelling, which the guard judges on the thread all the same)
    else:
        return check_host_at_connect(target.host, target.port, timeout=timeout)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, lambda: check_host_at_connect(target.host, target.port, timeout=timeout)
    )


def _request(target: ProbeTarget) -> h11.Request:
    headers = [
        ("Host", target.host_header),
        ("Accept", "application/json"),
        ("Accept-Encoding", "identity"),
        ("User-Agent", "budcluster/1.0"),
    ]
    if target.authorization:
        headers.append(("Authorization", target.authorization))
    return h11.Request(method="GET", target=f"{target.path}/version", headers=headers)


async def _exchange(conn: _Connection, target: ProbeTarget, cap: int) -> bool:
    """Send ``GET /version`` and read the answer; True if the connection may carry another request."""
    try:
        data = conn.http.send(_request(target)) + conn.http.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        raise _Failed("the stored kubeconfig's credentials cannot be sent in an HTTP header") from None
    conn.writer.write(data)
    status = 0
    content_encoding = b"identity"
    body: list[bytes] = []
    size = 0
    received = False
    while True:
        try:
            event = conn.http.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Failed(
                f"{target.server} answered {_WHERE} with something that is not HTTP ({exc})"
            ) from None
        if event is h11.NEED_DATA:
            try:
                chunk = await conn.reader.read(_READ_CHUNK)
            except ConnectionError:
                if conn.reused and not received:
                    raise _Stale from None
                raise
            if not chunk and conn.reused and not received:
                raise _Stale
            received = received or bool(chunk)
            conn.http.receive_data(chunk)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = dict(event.headers)  # h11 lower-cases names
            if 300 <= status < 400:
                raise _Failed(
                    f"{target.server} answered {_WHERE} with a redirect ({status}), which is not followed: the "
                    "server is not a Kubernetes API server or is misconfigured"
                )
            content_encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > cap and status < 400:
                raise _Failed(_too_large(target, cap, int(declared), declared=True))
            continue
        if isinstance(event, h11.Data):
            size += len(event.data)
            if status >= 400 and size > _ERROR_BODY_BYTES:  # an error body: what we have says enough
                body.append(event.data[: len(event.data) - (size - _ERROR_BODY_BYTES)])
                break
            if size > cap:
                raise _Failed(_too_large(target, cap, size))
            body.append(event.data)
            continue
        if isinstance(event, h11.EndOfMessage):
            break
        if isinstance(event, h11.ConnectionClosed):
            if conn.reused and not received:
                raise _Stale
            raise _Failed(f"connection to {target.server} failed: the server closed it before answering")
    payload = b"".join(body)
    if status >= 400:
        raise _Failed(_status_error(target, status, payload))
    if content_encoding != b"identity":
        raise _Failed(
            f"{target.server} answered {_WHERE} with content-encoding "
            f"{content_encoding.decode('latin-1')!r}, which was not asked"
        )
    if payload:
        try:
            json.loads(payload)
        except ValueError:
            raise _Failed(f"{target.server} answered {_WHERE} with something that is not JSON") from None
    return conn.http.our_state is h11.DONE and conn.http.their_state is h11.DONE


def _too_large(target: ProbeTarget, cap: int, size: int, *, declared: bool = False) -> str:
    so_far = f"{size} bytes declared" if declared else f"{size} bytes so far"
    return (
        f"{target.server} answered {_WHERE} with more than {cap // (1024 * 1024)} MiB ({so_far}); refusing to "
        "read further (a broken or hostile API server)"
    )


def _status_error(target: ProbeTarget, status: int, data: bytes) -> str:
    from core.gateway import answer_detail

    detail = answer_detail(data)
    if status == 401:
        return f"unauthorized: the API server at {target.server} rejected the credentials (401)"
    if status == 403:
        return f"forbidden: {_WHERE} is not permitted for these credentials: {detail}"
    return f"{target.server} answered {status} to {_WHERE}: {detail}"


async def _connect(target: ProbeTarget, ip: str, deadline: float) -> _Connection:
    try:
        ctx = _ssl_context(target)
    except (ssl.SSLError, ValueError) as exc:
        # A CA or client certificate that is base64 PEM but no certificate (the kubeconfig guard checks the
        # encoding only): the gateway's wording.
        raise _Failed(f"the kubeconfig's TLS data cannot be used: {exc}") from None
    left = max(deadline - time.monotonic(), 0.001)
    reader, writer = await asyncio.open_connection(
        ip,
        target.port,
        ssl=ctx,
        # The kubeconfig's host, not the pinned IP: SNI and certificate verification are about the name.
        server_hostname=target.host,
        ssl_handshake_timeout=left,
        limit=_READ_CHUNK,
    )
    return _Connection(reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024))


async def probe(
    target: ProbeTarget, timeout: float, pool: ConnectionPool, *, cap: int | None = None
) -> Outcome:
    """``GET /version`` of one cluster, everything (host check, connect, TLS, request, answer) within
    ``timeout`` seconds. Never raises: the outcome says what happened (see ``Outcome``)."""
    from core.netguard import AddressRefused, NameNotResolved

    cap = int(cap or setting("GATEWAY_MAX_RESPONSE_BYTES", 64 * 1024 * 1024))
    deadline = time.monotonic() + timeout
    conn: _Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                ip = await _pin(target, timeout)
            except NameNotResolved as exc:
                return False, str(exc)
            except AddressRefused as exc:
                return None, str(exc)
            key = (ip, target.port, target.host, target.tls_key)
            for attempt in range(2):
                # The retry after a stale kept connection opens a new one: its siblings are likely stale too.
                conn = pool.take(key) if attempt == 0 else None
                if conn is None:
                    conn = await _connect(target, ip, deadline)
                    pool.opened += 1
                try:
                    reusable = await _exchange(conn, target, cap)
                except _Stale:
                    conn.abort()
                    conn = None
                    continue
                if reusable:
                    conn.http.start_next_cycle()
                    pool.give(key, conn)
                else:
                    conn.abort()
                conn = None
                return True, ""
            return False, f"connection to {target.server} failed: the server closed it before answering"
    except TimeoutError:
        return (
            False,
            f"{target.server} did not answer within the {timeout:g}s allowed for this check ({_WHERE})",
        )
    except _Failed as exc:
        return False, str(exc)
    except ssl.SSLCertVerificationError:
        return False, (
            f"TLS verification of {target.server} failed: the certificate-authority-data does not match the "
            "server's certificate"
        )
    except ssl.SSLError as exc:
        return False, f"TLS with {target.server} failed: {exc.reason or type(exc).__name__}"
    except ConnectionError as exc:
        return False, f"cannot connect to {target.server}: {exc.strerror or type(exc).__name__}"
    except OSError as exc:
        return False, f"cannot connect to {target.server}: {exc.strerror or exc or type(exc).__name__}"
    finally:
        if conn is not None:  # cancelled or failed mid-exchange: the connection's state is unknown
            conn.abort()


__all__ = [
    "ConnectionPool",
    "Outcome",
    "ProbeRefused",
    "ProbeTarget",
    "ProbeTargets",
    "probe",
    "target_from_kubeconfig",
    "targets",
]
