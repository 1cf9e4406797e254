"""The cluster gateway: the one way in and out of a Kubernetes cluster.

Every read and write BudCluster makes to a cluster goes through :class:`ClusterGateway`, built from a kubeconfig
that already passed ``clusters.kubeconfig.validate_kubeconfig`` (its normalized form, decrypted in memory).

Why httpx instead of the official ``kubernetes`` client here: the official client's kubeconfig loader writes
``client-key-data`` and CA data to temporary files and builds a heavy object graph per cluster, which matters when a
health sweep touches thousands of clusters. httpx gives us an in-memory ``ssl.SSLContext`` (the CA from
``cadata``; a client certificate/key pair goes through a 0600 temp file that is deleted as soon as it is loaded,
because Python's ``ssl`` can only load a key from a file), connection reuse, and per-call timeouts. The API
surface we need is small and JSON: get/list/apply/delete by apiVersion+kind, resolved through discovery.

Safety:
* Connect-time host check: the server's host name is resolved once per gateway by ``check_host_at_connect``
  (same rules as the static check) and the connection is pinned to that IP, with the name kept for SNI and
  certificate verification and the Host header, so a DNS answer cannot be re-pointed after validation.
* Every call has a total deadline: its timeout covers connecting, the TLS handshake, the status line and
  headers and the whole body, not just each read (httpx's timeouts are per socket operation, so a server that
  drips a byte every few seconds would hold a worker for ever). The connections run on a network backend
  (:class:`_DeadlineBackend`) that gives every socket operation only what is left of the call's deadline.
  ``budget`` bounds every call of one gateway together (a live check inside a web request). Each answer has a
  size cap (``max_response_bytes``, counted after decompression, so a flood or a gzip bomb is cut off).
  Redirects are never followed: an API server that redirects is refused. Errors are mapped to a few typed
  exceptions with messages an operator can act on. No exception or log line carries a token, key or kubeconfig.
* :func:`pinned_client` gives the same guarantees (address guard, pinned IP, total deadline, size cap, no
  redirects) to the other outbound HTTP calls made from user input: the deployments' endpoint probes.
* Lists page with ``limit``/``continue`` (``page_size`` objects per request), so a 5,000-node inventory is a few
  bounded answers instead of one huge one; an expired continue token (410 Gone) restarts the list once.
* Writes are strict server-side apply: field manager ``budcluster`` and ``fieldValidation=Strict``. A field the
  API server does not know (a typo in a chart, a field from a newer Kubernetes) or a duplicated one is refused
  with its name (:class:`Invalid`) and nothing is written; applying the same object twice changes nothing (not
  even resourceVersion).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import ssl
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore
import httpx

from core.conf import setting

logger = logging.getLogger(__name__)

FIELD_MANAGER = "budcluster"
DEFAULT_TIMEOUT = 10.0
# Objects per list request. 500 is what kubectl and client-go's pager use: a page of 500 Nodes is a few MB,
# well under the response cap, and a 1,000-node inventory is two requests. Settings: GATEWAY_LIST_PAGE_SIZE.
DEFAULT_PAGE_SIZE = 500
# Largest answer read from a cluster (decoded bytes). Settings: GATEWAY_MAX_RESPONSE_BYTES.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# A whole paged list (every page, and one restart after an expired continue token) must finish within this.
# Settings: GATEWAY_LIST_DEADLINE.
DEFAULT_LIST_DEADLINE = 300.0
_ERROR_BODY_BYTES = 64 * 1024  # an error Status is small; read no more of it than this
# Inflated at most this much at a time (zlib grows its output buffer by doubling up to the limit asked for).
_INFLATE_STEP = 256 * 1024
# What the gateway asks for (Accept-Encoding: gzip) and can read: the API server compresses large answers.
_DECODERS = {
    "identity": lambda: None,
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(zlib.MAX_WBITS),
}


class GatewayError(Exception):
    """A cluster call failed; ``str()`` is safe to show to an operator."""

    reason = "error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(GatewayError):
    reason = "unreachable"


class Unauthorized(GatewayError):
    reason = "unauthorized"


class Forbidden(GatewayError):
    reason = "forbidden"


class NotFound(GatewayError):
    reason = "not_found"


class Conflict(GatewayError):
    reason = "conflict"


class Invalid(GatewayError):
    reason = "invalid"


class AddressNotAllowed(GatewayError):
    """BudCluster's own outbound-address guard (``core.netguard``) refused the API server's address: a loopback
    server while ``BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS`` is off in this process, or a name that now resolves to a
    forbidden address. Nothing was sent to the cluster, so this says nothing about its health: it is a
    configuration error to report (the health sweep leaves the cluster's status alone), and retrying cannot help."""

    reason = "address_refused"


class Expired(Unreachable):
    """410 Gone: a list's continue token (or a resourceVersion) is older than the API server still keeps.

    A kind of Unreachable because it is transient in the same way: the cluster changed faster than we could read
    it, and a later attempt normally succeeds (callers that retry unreachable clusters retry this too)."""

    reason = "expired"


@dataclass(frozen=True)
class ResourceInfo:
    plural: str
    namespaced: bool
    group_version: str  # "v1" or "apps/v1"

    def base(self) -> str:
        return (
            f"/api/{self.group_version}" if "/" not in self.group_version else f"/apis/{self.group_version}"
        )

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        parts = [self.base()]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        return "/".join(parts)


# Discovery answers per (server, group/version), kept a few minutes: kinds do not move between calls.
_DISCOVERY_TTL = 300.0
_discovery_cache: dict[tuple[str, str], tuple[float, dict[str, ResourceInfo]]] = {}
_discovery_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def system_ssl_context() -> ssl.SSLContext:
    """Public-CA verification, built once per process (reading the CA bundle costs ~20 ms): clusters whose
    kubeconfig carries no CA (e.g. managed endpoints) and model endpoints."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


# Kept-alive HTTP clients per (pinned address, credentials, TLS material, timeouts), reused by workflow steps in
# the same process so that each step and poll does not pay a new TLS handshake. The host check (and IP pin) still
# runs for every gateway: the pinned IP is part of the key. Entries expire after _POOL_TTL seconds of disuse.
# Only single-threaded users (Celery prefork processes, one step at a time) should ask for reuse: an evicted client
# is closed, which would break a request another thread had in flight on it.
_POOL_TTL = 60.0
_POOL_MAX = 64
_pool: dict[str, tuple[float, httpx.Client]] = {}
_pool_lock = threading.Lock()


def _pool_key(base: str, headers: dict, cluster: dict, user: dict) -> str:
    material = json.dumps(
        [base, sorted(headers.items()), cluster.get("certificate-authority-data"),
         cluster.get("insecure-skip-tls-verify"), user.get("client-certificate-data"),
         user.get("client-key-data")],
        default=str,
    )  # fmt: skip
    return hashlib.sha256(material.encode()).hexdigest()


def _pool_get(key: str) -> httpx.Client | None:
    now = time.monotonic()
    with _pool_lock:
        entry = _pool.get(key)
        if entry is None:
            return None
        if now - entry[0] > _POOL_TTL:
            del _pool[key]
            entry[1].close()
            return None
        _pool[key] = (now, entry[1])
        return entry[1]


def _pool_put(key: str, client: httpx.Client) -> None:
    with _pool_lock:
        _pool[key] = (time.monotonic(), client)
        while len(_pool) > _POOL_MAX:
            oldest = min(_pool, key=lambda k: _pool[k][0])
            _pool.pop(oldest)[1].close()


def _pem(data_b64: str) -> str:
    return base64.b64decode(data_b64).decode("ascii")


# --- total deadlines ---------------------------------------------------------------------------------------------
#
# httpx (httpcore underneath) applies its timeouts to each socket operation: a read that gets one byte before its
# timeout succeeds, so a server sending the status line and headers a byte every two seconds is never timed out.
# The connections therefore run on a network backend whose every operation (connect, TLS handshake, read, write)
# gets at most what is left of the current call's deadline, kept per thread (httpx's sync client does all of a
# call's I/O on the caller's thread). CPython bounds a whole TLS handshake by the socket timeout, so the
# handshake is covered by the same rule.

_call = threading.local()


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Every connection operation on this thread inside the block ends by ``deadline`` (``time.monotonic()``);
    an enclosing scope with an earlier deadline wins."""
    outer = getattr(_call, "deadline", None)
    if deadline is None:
        _call.deadline = outer
    else:
        _call.deadline = deadline if outer is None else min(outer, deadline)
    try:
        yield
    finally:
        _call.deadline = outer


def _within_deadline(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = getattr(_call, "deadline", None)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("the call's total deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, budget, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for clusters or endpoints")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class ResponseTooLarge(httpx.TransportError):
    """An answer grew past the client's size cap (raised while reading it)."""


class _DeadlineBody(httpx.SyncByteStream):
    """A response body read within the call's deadline and, optionally, a size cap (bytes on the wire)."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float | None, cap: int | None) -> None:
        self._inner, self._deadline, self._cap = inner, deadline, cap

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        with deadline_scope(self._deadline):
            for chunk in self._inner:
                size += len(chunk)
                if self._cap is not None and size > self._cap:
                    raise ResponseTooLarge(f"the answer is larger than {self._cap} bytes; not read further")
                yield chunk

    def close(self) -> None:
        self._inner.close()


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on the deadline backend: every request ends within ``total_timeout`` (connect, TLS,
    headers and body), its body is cut at ``max_response_bytes``, and with ``pin=(name, ip)`` it connects only
    to ``ip`` (checked by the address guard) while keeping ``name`` for the Host header, SNI and certificate
    verification; a request for any other host is refused (no redirect or absolute URL can leave the pin)."""

    def __init__(
        self,
        *,
        total_timeout: float | None = None,
        max_response_bytes: int | None = None,
        pin: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(trust_env=False, **kwargs)
        # httpx has no parameter for httpcore's network backend; the pool it just built takes it as an
        # attribute read whenever a connection is opened (httpcore 1.x).
        self._pool._network_backend = _DeadlineBackend()
        self._total_timeout = total_timeout
        self._max_response_bytes = max_response_bytes
        self._pin = pin

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._pin is not None:
            name, ip = self._pin
            if (request.url.host or "").lower().rstrip(".") != name:
                raise httpx.ConnectError(
                    f"{request.url.host} is not the checked address {name}; not connecting", request=request
                )
            request.url = request.url.copy_with(host=ip)
            if request.url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": name}
        deadline = time.monotonic() + self._total_timeout if self._total_timeout is not None else None
        with deadline_scope(deadline):
            deadline = _call.deadline  # an enclosing call's deadline may be earlier
            response = super().handle_request(request)
        if deadline is None and self._max_response_bytes is None:
            return response
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_DeadlineBody(response.stream, deadline, self._max_response_bytes),
            extensions=response.extensions,
        )


def pinned_client(
    url: str,
    *,
    timeout: float,
    max_response_bytes: int | None = None,
    allow_loopback: bool | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.Client:
    """An httpx client for one address that came from user input or from a cluster (a model endpoint).

    The host is checked by the outbound-address guard once (raises ``core.netguard.AddressRefused``) and every
    connection goes to the IP it checked, the name kept for the Host header, SNI and certificate verification:
    no DNS answer can re-point it after the check (rebinding). Each request must finish within ``timeout``
    seconds in total, body included; bodies are capped at ``max_response_bytes`` (default
    ``GATEWAY_MAX_RESPONSE_BYTES``) and asked for uncompressed; redirects are not followed.
    """
    from core.netguard import check_host_at_connect

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    name = parts.hostname.lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = check_host_at_connect(name, port, allow_loopback=allow_loopback, timeout=timeout)
    cap = int(max_response_bytes or setting("GATEWAY_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES))
    transport = GuardedTransport(
        total_timeout=timeout,
        max_response_bytes=cap,
        pin=(name, ip),
        verify=verify or system_ssl_context(),
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
    )
    return httpx.Client(
        base_url=url,
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"Accept-Encoding": "identity", "User-Agent": "budcluster/1.0"},
    )


def answer_detail(data: bytes) -> str:
    """What an API server's error answer says: its Status ``message``, else the start of the body."""
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text).get("message") or text[:300]
    except (ValueError, AttributeError):
        return text[:300]


class ClusterGateway:
    """A connection to one cluster. Cheap to build; use as a context manager (or call ``close()``)."""

    def __init__(
        self,
        kubeconfig: dict,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        allow_loopback: bool | None = None,
        reuse: bool = False,
        page_size: int | None = None,
        max_response_bytes: int | None = None,
        list_deadline: float | None = None,
        budget: float | None = None,
    ) -> None:
        """``timeout`` is the total deadline of each request (connect, TLS, headers and the whole answer);
        ``page_size`` objects are asked for per list request (default ``DEFAULT_PAGE_SIZE``, 500);
        ``max_response_bytes`` caps each answer; ``list_deadline`` bounds a whole paged list; ``budget`` bounds
        everything done through this gateway, from its creation (the host lookup included) to its last call."""
        from core.netguard import AddressRefused, NameNotResolved, check_host_at_connect

        self.budget = budget
        self._budget_end = time.monotonic() + budget if budget is not None else None

        context_name = kubeconfig.get("current-context")
        contexts = {c["name"]: c["context"] for c in kubeconfig.get("contexts", [])}
        context = contexts.get(context_name) or next(iter(contexts.values()))
        cluster = next(c["cluster"] for c in kubeconfig["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in kubeconfig["users"] if u["name"] == context["user"])
        self.server = cluster["server"].rstrip("/")
        self.namespace = context.get("namespace") or "default"
        self.timeout = timeout
        self.page_size = int(page_size or setting("GATEWAY_LIST_PAGE_SIZE", DEFAULT_PAGE_SIZE))
        self.max_response_bytes = int(
            max_response_bytes or setting("GATEWAY_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES)
        )
        self.list_deadline = float(list_deadline or setting("GATEWAY_LIST_DEADLINE", DEFAULT_LIST_DEADLINE))
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        url = urlsplit(self.server)
        self.host = url.hostname or ""
        port = url.port or 443
        try:
            lookup = timeout if budget is None else min(timeout, budget)
            ip = check_host_at_connect(self.host, port, allow_loopback=allow_loopback, timeout=lookup)
        except NameNotResolved as exc:  # DNS has no answer: the cluster is not reachable from here
            raise Unreachable(str(exc)) from None
        except AddressRefused as exc:
            raise AddressNotAllowed(str(exc)) from None
        netloc_ip = f"[{ip}]" if ":" in ip else ip
        self._base = f"https://{netloc_ip}:{port}{url.path.rstrip('/')}"
        self._host_header = url.netloc.rsplit("@", 1)[-1]
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "User-Agent": "budcluster/1.0",
            "Host": self._host_header,
        }
        if user.get("token"):
            headers["Authorization"] = f"Bearer {user['token']}"
        elif user.get("username") and user.get("password"):
            raw = f"{user['username']}:{user['password']}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self._reuse = reuse
        self._connect_timeout = connect_timeout or timeout
        self._timeout = httpx.Timeout(timeout, connect=self._connect_timeout)
        key = _pool_key(self._base, headers, cluster, user) if reuse else ""
        client = _pool_get(key) if reuse else None
        if client is None:
            try:
                verify = self._ssl_context(cluster, user)
            except (ssl.SSLError, ValueError) as exc:
                # A CA or client certificate that is base64 PEM but no certificate (the kubeconfig guard checks the
                # encoding only): the cluster cannot be called, and the operator is told why (never a crash).
                raise Invalid(f"the kubeconfig's TLS data cannot be used: {exc}") from None
            client = httpx.Client(
                transport=GuardedTransport(
                    verify=verify,
                    limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
                ),
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=connect_timeout or timeout),
                follow_redirects=False,
                trust_env=False,
            )
            if reuse:
                _pool_put(key, client)
        self._client = client
        self._sni = self.host
        self._resources: dict[str, dict[str, ResourceInfo]] = {}

    @staticmethod
    def _ssl_context(cluster: dict, user: dict) -> ssl.SSLContext:
        has_client_cert = bool(user.get("client-certificate-data") and user.get("client-key-data"))
        if cluster.get("certificate-authority-data") or cluster.get("insecure-skip-tls-verify"):
            # Trust exactly the kubeconfig's CA. A bare client context (hostname check and verification on)
            # costs ~0.1 ms; create_default_context() parses the whole system CA bundle (~20 ms), which
            # dominated a sweep over thousands of clusters.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        elif not has_client_cert:
            return system_ssl_context()  # shared and never modified: safe to reuse across threads
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if cluster.get("insecure-skip-tls-verify"):
            # Only reachable for loopback dev clusters; the kubeconfig guard refuses it everywhere else.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            ctx.load_verify_locations(cadata=_pem(cluster["certificate-authority-data"]))
        if has_client_cert:
            # ssl can load a key only from a file: write it 0600, load, delete at once.
            with tempfile.TemporaryDirectory(prefix="budcluster-") as tmp:
                os.chmod(tmp, 0o700)
                cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
                for path, data in ((cert, user["client-certificate-data"]), (key, user["client-key-data"])):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(base64.b64decode(data))
                ctx.load_cert_chain(cert, key)
        return ctx

    # --- plumbing ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._reuse:  # pooled clients stay open for the next gateway to the same cluster
            self._client.close()

    def __enter__(self) -> ClusterGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """One call to the API server: JSON in, JSON (or text with ``raw``) out, errors as typed exceptions.

        ``timeout`` (default: the gateway's) is a total deadline for the call, and the answer is read in chunks
        up to ``max_response_bytes``: httpx's own timeouts apply to each socket operation, so without this a
        server sending a byte every few seconds (in the headers or the body), or an endless body, would hold the
        worker indefinitely. Every socket operation of the call gets only what is left of the deadline
        (``deadline_scope``), and the deadline is checked again after every chunk. With a ``budget``, a call
        gets no more than what is left of it.
        """
        url = self._base + path
        content = None
        headers = {}
        if body is not None:
            content = body if isinstance(body, str | bytes) else json.dumps(body)
            headers["Content-Type"] = content_type
        limit = timeout if timeout is not None else self.timeout
        where = f"{method} {path}"
        allowed = ""
        if self._budget_end is not None:
            left = self._budget_end - time.monotonic()
            if left <= 0:
                raise Unreachable(
                    f"{self.server} did not answer in time: the {self.budget:g}s allowed for this check ran out "
                    f"before {where}"
                )
            if left < limit:
                limit, timeout = left, left
                allowed = f"the {self.budget:g}s allowed for this check"
        deadline = time.monotonic() + limit
        allowed = allowed or f"{limit:g}s"
        try:
            with (
                deadline_scope(deadline),
                self._client.stream(
                    method,
                    url,
                    params=params,
                    content=content,
                    headers=headers,
                    # Per request, so that a pooled client serves gateways with different timeouts.
                    timeout=httpx.Timeout(timeout, connect=min(timeout, self._connect_timeout))
                    if timeout is not None
                    else self._timeout,
                    extensions={"sni_hostname": self._sni},
                ) as response,
            ):
                if 300 <= response.status_code < 400:
                    # httpx follows no redirect here; an API server does not redirect, and following one would
                    # take the credentials to an address the guard never checked.
                    raise Unreachable(
                        f"{self.server} answered {where} with a redirect ({response.status_code}), which is not "
                        "followed: the server is not a Kubernetes API server or is misconfigured",
                        status=response.status_code,
                    )
                failed = response.status_code >= 400
                data = self._read(
                    response, where, deadline, allowed, cap=_ERROR_BODY_BYTES if failed else None
                )
        except httpx.TimeoutException:
            raise Unreachable(f"{self.server} did not answer within {allowed} ({where})") from None
        except httpx.ConnectError as exc:
            message = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in message:
                raise Unreachable(
                    f"TLS verification of {self.server} failed: the certificate-authority-data does not match "
                    "the server's certificate"
                ) from None
            raise Unreachable(f"cannot connect to {self.server}: {message or type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"connection to {self.server} failed: {type(exc).__name__}: {exc}") from None
        if failed:
            raise self._error(response.status_code, data, where)
        if raw:
            return data.decode(response.encoding or "utf-8", errors="replace")
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise Invalid(f"{self.server} answered {where} with something that is not JSON") from None

    def _read(
        self, response: httpx.Response, where: str, deadline: float, allowed: str, *, cap: int | None
    ) -> bytes:
        """The body, within the deadline and the size cap (an error body is only read up to ``cap``).

        Read raw and inflated here, at most up to the cap: httpx would inflate each received chunk whole, and
        64 KiB of gzip can hold tens of MB (a gzip bomb then costs that much memory before any cap applies).
        Pieces are joined only once the whole answer is in, so a refused flood costs about the cap."""
        maximum = cap or self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if cap is None and declared.isdigit() and int(declared) > maximum:
            raise Invalid(self._too_large(where, int(declared), declared=True))
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in _DECODERS:
            raise Invalid(
                f"{self.server} answered {where} with content-encoding {encoding!r}, which was not asked"
            )
        inflater = _DECODERS[encoding]()
        pieces: list[bytes] = []
        size = 0
        for raw in response.iter_raw():
            data = raw
            while data:
                if inflater is None:
                    piece, data = data, b""
                else:
                    try:
                        piece = inflater.decompress(data, min(maximum - size + 1, _INFLATE_STEP))
                    except zlib.error:
                        raise Invalid(
                            f"{self.server} answered {where} with a corrupt {encoding} body"
                        ) from None
                    data = inflater.unconsumed_tail
                size += len(piece)
                if size > maximum:
                    if cap is not None:  # an error body: what we have is enough to say what went wrong
                        pieces.append(piece[: len(piece) - (size - maximum)])
                        return b"".join(pieces)
                    raise Invalid(self._too_large(where, size))
                pieces.append(piece)
            if time.monotonic() > deadline:
                raise Unreachable(
                    f"{self.server} did not finish answering {where} within {allowed} "
                    f"({size} bytes received): the API server is overloaded or the connection is throttled"
                )
        return b"".join(pieces)

    def _too_large(self, where: str, size: int, *, declared: bool = False) -> str:
        so_far = f"{size} bytes declared" if declared else f"{size} bytes so far"
        return (
            f"{self.server} answered {where} with more than {self.max_response_bytes // (1024 * 1024)} MiB "
            f"({so_far}); refusing to read further (lists are paged with page_size={self.page_size}; "
            "a single object this large means a broken or hostile API server)"
        )

    def _error(self, status: int, data: bytes, where: str) -> GatewayError:
        detail = answer_detail(data)
        if status == 401:
            return Unauthorized(
                f"unauthorized: the API server at {self.server} rejected the credentials (401)", status=status
            )
        if status == 403:
            return Forbidden(
                f"forbidden: {where} is not permitted for these credentials: {detail}", status=status
            )
        if status == 404:
            return NotFound(f"not found: {where}: {detail}", status=status)
        if status == 409:
            return Conflict(f"conflict: {where}: {detail}", status=status)
        if status == 410:
            return Expired(f"expired (410 Gone): {where}: {detail}", status=status)
        if status in (400, 415, 422):
            return Invalid(f"invalid request {where}: {detail}", status=status)
        if status == 500 and "failed to create typed patch object" in detail:
            # Server-side apply checks the object against the schema before fieldValidation runs and reports a
            # field the schema lacks as a 500 (kubernetes/kubernetes#122480, #139253). The object is wrong, not
            # the server: Invalid, so that no step retries it as if the cluster were unreachable.
            return Invalid(f"invalid object {where}: {detail}", status=status)
        return Unreachable(f"{self.server} answered {status} to {where}: {detail}", status=status)

    # --- discovery ------------------------------------------------------------------------------------------

    def resource(self, api_version: str, kind: str) -> ResourceInfo:
        resources = self._group_version(api_version)
        try:
            return resources[kind]
        except KeyError:
            raise NotFound(f"the cluster does not serve kind {kind} in {api_version}") from None

    def _group_version(self, api_version: str) -> dict[str, ResourceInfo]:
        if api_version in self._resources:
            return self._resources[api_version]
        key = (self.server, api_version)
        now = time.monotonic()
        with _discovery_lock:
            cached = _discovery_cache.get(key)
        if cached and now - cached[0] < _DISCOVERY_TTL:
            self._resources[api_version] = cached[1]
            return cached[1]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        listing = self.request("GET", base)
        resources = {
            r["kind"]: ResourceInfo(r["name"], bool(r.get("namespaced")), api_version)
            for r in listing.get("resources", [])
            if "/" not in r["name"]
        }
        with _discovery_lock:
            _discovery_cache[key] = (now, resources)
        self._resources[api_version] = resources
        return resources

    # --- reads ----------------------------------------------------------------------------------------------

    def version(self) -> dict:
        return self.request("GET", "/version")

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict:
        return self.request("GET", self.resource(api_version, kind).path(namespace, name))

    def get_or_none(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict | None:
        try:
            return self.get(api_version, kind, name, namespace)
        except NotFound:
            return None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float | None = None,
        page_size: int | None = None,
    ) -> list[dict]:
        """Every object of a kind (in ``namespace``, or cluster-wide), read in pages of ``page_size`` objects.

        Pages follow the API server's ``continue`` tokens, so each answer stays small and bounded (``timeout``
        and the response cap apply to each page) while the whole list is one consistent snapshot. A continue
        token can expire (410 Gone) when the list takes longer than the server keeps history (etcd compaction,
        every 5 minutes by default): the list then starts again once from the first page, and a second expiry
        raises :class:`Expired`. The whole list, restart included, must finish within ``list_deadline``.
        """
        path = self.resource(api_version, kind).path(namespace)
        what = f"{kind} ({api_version}{f', namespace {namespace}' if namespace else ''})"
        selectors = {}
        if label_selector:
            selectors["labelSelector"] = label_selector
        if field_selector:
            selectors["fieldSelector"] = field_selector
        limit = int(page_size or self.page_size)
        deadline = time.monotonic() + self.list_deadline
        try:
            return self._list_pages(path, selectors, limit, timeout, deadline, what)
        except Expired:
            logger.info("list of %s on %s: continue token expired, listing again", what, self.server)
        try:
            return self._list_pages(path, selectors, limit, timeout, deadline, what)
        except Expired as exc:
            raise Expired(
                f"the list of {what} on {self.server} expired twice while paging (410 Gone: the API server no "
                f"longer keeps the snapshot a continue token points to). The cluster changes faster than it can "
                f"be read {limit} objects per page; try again, or raise the page size",
                status=exc.status,
            ) from None

    def _list_pages(
        self, path: str, selectors: dict, limit: int, timeout: float | None, deadline: float, what: str
    ) -> list[dict]:
        items: list[dict] = []
        token = ""
        seen: set[str] = set()
        while True:
            params = {**selectors, "limit": str(limit)}
            if token:
                params["continue"] = token
            body = self.request("GET", path, params=params, timeout=timeout)
            items.extend(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue") or ""
            if not token:
                return items
            if token in seen:  # a broken server could otherwise keep us paging forever
                raise Invalid(f"{self.server} returned the same continue token twice while listing {what}")
            seen.add(token)
            if time.monotonic() > deadline:
                raise Unreachable(
                    f"listing {what} on {self.server} took longer than {self.list_deadline:g}s "
                    f"({len(items)} objects read in {len(seen)} pages of {limit})"
                )

    def pod_logs(
        self, namespace: str, name: str, *, tail_lines: int = 200, container: str | None = None
    ) -> str:
        params: dict[str, Any] = {"tailLines": tail_lines}
        if container:
            params["container"] = container
        return self.request(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log", params=params, raw=True
        )

    def can_i(self, verb: str, resource: str, group: str = "", namespace: str | None = None) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": group}},
        }
        if namespace:
            review["spec"]["resourceAttributes"]["namespace"] = namespace
        answer = self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
        return bool(answer.get("status", {}).get("allowed"))

    def is_openshift(self) -> bool:
        """OpenShift clusters serve the config.openshift.io API group (ClusterVersion lives there).

        Asked through discovery, which every authenticated user may read: a GET of a resource the cluster
        does not serve is authorized before it is found, so a least-privilege account gets 403, not 404."""
        groups = self.request("GET", "/apis").get("groups") or []
        return any(g.get("name") == "config.openshift.io" for g in groups)

    # --- writes ---------------------------------------------------------------------------------------------

    def apply(self, obj: dict, *, force: bool = True) -> dict:
        """Server-side apply one object (create or update) as field manager ``budcluster``.

        ``fieldValidation=Strict``: an unknown or duplicated field is refused (:class:`Invalid`, naming the field)
        and nothing is written. Apply's own schema check already refuses unknown fields of typed kinds (as a 500,
        see ``_error``); Strict states the contract and adds the strict decoding of the patch (duplicate fields),
        which "Warn" (the server's default) would only report in a response header nobody reads."""
        meta = obj.get("metadata", {})
        info = self.resource(obj["apiVersion"], obj["kind"])
        namespace = meta.get("namespace") if info.namespaced else None
        if info.namespaced and not namespace:
            namespace = self.namespace
            obj = {**obj, "metadata": {**meta, "namespace": namespace}}
        params = {
            "fieldManager": FIELD_MANAGER,
            "fieldValidation": "Strict",
            "force": "true" if force else "false",
        }
        return self.request(
            "PATCH",
            info.path(namespace, meta["name"]),
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def apply_all(self, objects: Iterable[dict]) -> list[dict]:
        return [self.apply(obj) for obj in sort_for_apply(objects)]

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, missing_ok: bool = True
    ) -> bool:
        """Delete one object (background cascading). Returns False if it was already gone."""
        info = self.resource(api_version, kind)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", info.path(namespace, name), body=body)
        except NotFound:
            if not missing_ok:
                raise
            return False
        return True

    def create_secret(
        self, namespace: str, name: str, data: dict[str, str], *, labels: dict | None = None
    ) -> None:
        """Create or update an Opaque Secret (values given in clear, sent base64 as the API requires)."""
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        self.apply(secret)


# Create order: what other objects need comes first (Helm's install order, trimmed to what our charts use).
_KIND_ORDER = [
    "Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment", "StatefulSet", "Job", "CronJob", "Ingress",
]  # fmt: skip


def sort_for_apply(objects: Iterable[dict]) -> list[dict]:
    order = {kind: i for i, kind in enumerate(_KIND_ORDER)}
    return sorted(objects, key=lambda o: order.get(o.get("kind", ""), len(order)))


def object_ref(obj: dict) -> dict:
    """The identity of an object, as stored in a release revision's object list."""
    meta = obj.get("metadata", {})
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"]}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref
