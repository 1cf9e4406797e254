"""A webhook receiver on loopback that records every request and answers as the test tells it to.

Signatures are checked against the Standard Webhooks formula computed here by hand (not with the package the
service signs with), so a wrong signature scheme on either side shows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    def signature_valid(self, secret: str) -> bool:
        sig = expected_signature(
            secret, self.headers["webhook-id"], self.headers["webhook-timestamp"], self.body
        )
        return any(hmac.compare_digest(sig, s) for s in self.headers["webhook-signature"].split(" "))


@dataclass
class Receiver:
    """``status``: what to answer (a callable of the request number, 1-based, may be used instead);
    ``block``: when set, each request waits for ``release`` before answering (and sets ``blocked``)."""

    status: int | object = 204
    block: bool = False
    requests: list[Received] = field(default_factory=list)
    blocked: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.arrived:
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    number = len(receiver.requests)
                    receiver.arrived.notify_all()
                if receiver.block:
                    receiver.blocked.set()
                    receiver.release.wait(60)
                code = receiver.status(number) if callable(receiver.status) else receiver.status
                try:
                    self.send_response(code)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client went away (a killed worker)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/budcluster?token=receiver-own-token"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"the receiver got {len(self.requests)} request(s), expected {count}")
            return list(self.requests)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
