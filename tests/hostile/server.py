"""A tiny hostile HTTPS "API server" for tests and benchmarks: it answers like a broken or malicious cluster.

Each connection is served on its own thread, byte by byte where the behaviour needs it, so the client side sees
exactly what a real hostile server would send. Behaviours (``HostileServer(behaviour)``):

* ``healthy``: answers ``/version`` (and any other path) with a small JSON object at once.
* ``drip``: headers at once, then the body one byte every ``interval`` seconds (a declared length it never
  reaches).
* ``drip_headers``: the status line and headers themselves one byte every ``interval`` seconds.
* ``flood``: a chunked body without a length, as fast as the socket takes it, forever (400 MB and beyond).
* ``flood_declared``: ``Content-Length`` of 400 MB, then the same endless bytes.
* ``gzip_bomb``: a gzip body of about 128 KiB that inflates to 128 MiB.
* ``endless``: a valid-looking JSON stream, 1 KiB every 10 ms, that never ends (stays under a size cap).
* ``redirect``: ``302`` to the AWS metadata address.
* ``stall_handshake``: accepts the TCP connection and never speaks TLS.
* ``slow_handshake``: a correct TLS server behind a link that delivers its bytes one every ``interval`` seconds
  (the ServerHello and certificate alone then take minutes: every read gets a byte, no read times out).
* ``wrong_ca``: a healthy server whose certificate is signed by a CA the kubeconfig does not carry.

The server certificate is issued by ``authority`` (``devcluster.tls.Authority``) for 127.0.0.1 and localhost;
``kubeconfig()`` returns a kubeconfig trusting that authority (for ``wrong_ca``: a different one).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import tempfile
import threading
import zlib
from pathlib import Path

from devcluster.tls import Authority

BEHAVIOURS = (
    "healthy",
    "drip",
    "drip_headers",
    "flood",
    "flood_declared",
    "gzip_bomb",
    "endless",
    "redirect",
    "stall_handshake",
    "slow_handshake",
    "wrong_ca",
)
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-hostile"}
_MIB = 1024 * 1024
_FLOOD_CHUNK = b"x" * _MIB
_FLOOD_FRAME_HEAD = f"{_MIB:x}\r\n".encode()


def _gzip_bomb(inflated: int = 128 * _MIB) -> bytes:
    """``inflated`` zero bytes, gzip-compressed (about 0.1 % of that on the wire)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    zeros = b"\0" * _MIB
    return b"".join([*(comp.compress(zeros) for _ in range(inflated // _MIB)), comp.flush()])


class HostileServer:
    """Serve ``behaviour`` on 127.0.0.1 (a free port) until ``close()``; use as a context manager."""

    def __init__(self, behaviour: str, *, interval: float = 0.5, authority: Authority | None = None) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {BEHAVIOURS}")
        self.behaviour = behaviour
        self.interval = interval
        self.authority = authority or Authority.create("hostile-ca")
        signer = Authority.create("some-other-ca") if behaviour == "wrong_ca" else self.authority
        cert_pem, key_pem = signer.issue("hostile-apiserver", server=True)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_bytes(cert_pem)
            key.write_bytes(key_pem)
            self._tls.load_cert_chain(cert, key)
        self._bomb = _gzip_bomb() if behaviour == "gzip_bomb" else b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.requests: list[str] = []  # request lines seen, in order
        self._thread = threading.Thread(target=self._accept, name=f"hostile-{behaviour}", daemon=True)
        self._thread.start()

    # --- what a test needs --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, token: str = "hostile-token") -> dict:  # noqa: S107 - a test token
        ca = base64.b64encode(self.authority.cert_pem).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "hostile",
            "clusters": [
                {"name": "hostile", "cluster": {"server": self.url, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "hostile", "user": {"token": token}}],
            "contexts": [{"name": "hostile", "context": {"cluster": "hostile", "user": "hostile"}}],
        }

    def kubeconfig_yaml(self, token: str = "hostile-token") -> str:  # noqa: S107 - a test token
        return json.dumps(self.kubeconfig(token))  # JSON is YAML

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- serving ------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._serve_safely, args=(conn,), daemon=True).start()

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass  # the client gave up: exactly what a hostile server expects
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _serve(self, raw: socket.socket) -> None:
        if self.behaviour == "stall_handshake":
            self._closing.wait()
            return
        if self.behaviour == "slow_handshake":
            self._serve_over_slow_link(raw)
            return
        raw.settimeout(30)
        conn = self._tls.wrap_socket(raw, server_side=True)
        with self._lock:
            self._connections.append(conn)
        self._serve_http(conn)

    def _serve_over_slow_link(self, client: socket.socket) -> None:
        """A healthy TLS server on one end of a socket pair, the client on the other, one byte per interval."""
        near, far = socket.socketpair()
        with self._lock:
            self._connections.extend([near, far])
        server = threading.Thread(target=self._serve_tls_healthy, args=(far,), daemon=True)
        server.start()

        def pump(src: socket.socket, dst: socket.socket, interval: float) -> None:
            try:
                while not self._closing.is_set():
                    data = src.recv(65536)
                    if not data:
                        return
                    if not interval:
                        dst.sendall(data)
                        continue
                    for i in range(len(data)):
                        if self._closing.wait(interval):
                            return
                        dst.sendall(data[i : i + 1])
            except OSError:
                return

        threading.Thread(target=pump, args=(client, near, 0.0), daemon=True).start()
        pump(near, client, self.interval)

    def _serve_tls_healthy(self, sock: socket.socket) -> None:
        try:
            conn = self._tls.wrap_socket(sock, server_side=True)
            self._respond_json(conn, VERSION)
        except (OSError, ssl.SSLError):
            pass

    def _read_request(self, conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("client closed")
            data += chunk
            if len(data) > 1_000_000:
                raise ValueError("request too large")
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        self.requests.append(line)
        return line

    def _respond_json(self, conn: socket.socket, body: dict) -> None:
        self._read_request(conn)
        payload = json.dumps(body).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    def _serve_http(self, conn: socket.socket) -> None:
        behaviour = self.behaviour
        if behaviour in ("healthy", "wrong_ca"):
            while not self._closing.is_set():  # keep-alive: answer every request on the connection
                self._respond_json(conn, VERSION)
            return
        self._read_request(conn)
        if behaviour == "drip":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            self._drip(conn, b'{"gitVersion": "' + b"v" * 99_980)
        elif behaviour == "drip_headers":
            self._drip(
                conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 99_000
            )
        elif behaviour in ("flood", "flood_declared"):
            if behaviour == "flood":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                frames = (_FLOOD_FRAME_HEAD, _FLOOD_CHUNK, b"\r\n")
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(400 * _MIB).encode()
                    + b"\r\n\r\n"
                )
                frames = (_FLOOD_CHUNK,)
            # Sent from prebuilt buffers: the server allocates nothing per frame, so measuring the client's
            # memory in this same process measures the client.
            while not self._closing.is_set():
                for frame in frames:
                    conn.sendall(frame)
        elif behaviour == "gzip_bomb":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: " + str(len(self._bomb)).encode() + b"\r\n\r\n" + self._bomb
            )
            self._closing.wait()
        elif behaviour == "endless":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            piece = b'{"items": [' + b'{"a": 1},' * 113  # about 1 KiB
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            while not self._closing.wait(0.01):
                conn.sendall(frame)
        elif behaviour == "redirect":
            conn.sendall(
                b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/iam/\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            self._closing.wait()

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._closing.wait(self.interval):
                return
            conn.sendall(data[i : i + 1])
