"""The outbound-address guard: which hosts BudCluster may connect to, checked when a URL is accepted and again
when a connection is made.

Every outbound connection the service makes from user input (cluster API servers, model endpoints, object
stores, webhooks) goes through this module, so the rules live in one place:

* Hosts that are unspecified (0.0.0.0/8, ::), link-local (169.254.0.0/16, fe80::/10), cloud metadata
  (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16, 192.0.0.192, metadata.google.internal,
  metadata, ...), multicast/broadcast/reserved, and loopback (127.0.0.0/8, ::1, localhost, *.localhost) unless
  loopback is allowed (``BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS``; the devcluster needs it) are refused. AWS's
  link-local services over IPv6 live in ``fd00:ec2::/32`` (instance metadata ``::254``, DNS ``::253``, EKS Pod
  Identity ``::23``, time ``::123``): the whole prefix is refused as metadata.
* IPv4 embedded in IPv6 is judged by its IPv4 address: IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
  ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002:AABB:CCDD::/48`` and Teredo ``2001:0::/32`` (both the server
  and the obfuscated client address), so ``2002:a9fe:a9fe::`` is the metadata address it wraps. IPv4-translated
  ``::ffff:0:a.b.c.d`` and local-use NAT64 ``64:ff9b:1::/48`` are reserved ranges and refused as such.
* Host spellings are normalised the way the HTTP client stack would before judging them: case, one trailing
  dot, IPv6 zone ids (``%25eth0``), IDNA (full-width characters), and the ``inet_aton`` numeric forms
  (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``). A host whose last label is numeric but is no
  valid address is refused rather than guessed at.
* :func:`check_url` applies the same rules to a whole URL: the parser-confusion characters refused outright,
  an allowed scheme, no user info, query or fragment, a non-zero port, then the host rules (kubeconfig servers
  and proxies, a cluster's ingress URL, an S3 endpoint).
* :func:`check_host_at_connect` resolves a name once, refuses if ANY resolved address is forbidden, and returns
  one address to pin (DNS rebinding): connect to that IP and keep the name for TLS (SNI and certificate
  verification) and the Host header.

It lives in ``core`` (not in the kubeconfig validation of ``clusters``, which uses it) because the gateway and
the deployments' endpoint probes need it too, and ``core`` imports no app.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from core.conf import setting

__all__ = [
    "AddressRefused",
    "CheckedUrl",
    "HostVerdict",
    "NameNotResolved",
    "check_host_at_connect",
    "check_url",
    "classify_host",
    "classify_ip",
    "refuse_verdict",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValueError):
    """A host BudCluster must not connect to (or cannot judge); the message names it and carries no secret."""


class NameNotResolved(AddressRefused):
    """The host's name did not resolve (or not in time): nothing was judged, so this says where the host is not
    reachable from, not that BudCluster's rules forbid it (callers report it as an unreachable host)."""


def loopback_allowed(value: bool | None = None) -> bool:
    return bool(setting("BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS", False)) if value is None else value


# --- hosts --------------------------------------------------------------------------------------------------

METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
LOOPBACK_HOSTNAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "localhost6",
        "localhost6.localdomain6",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",  # AWS DNS resolver over IPv6
        "fd00:ec2::23",  # EKS Pod Identity agent over IPv6 (hands out the pod role's credentials)
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)
# AWS's Nitro link-local services over IPv6 (metadata, DNS, time, EKS Pod Identity): nothing a cluster or model
# endpoint may be, whichever address of it a later service adds.
AWS_LINK_LOCAL_V6 = ipaddress.ip_network("fd00:ec2::/32")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to ``addr`` may end up at (judged like the address itself)."""
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr in _NAT64:
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    if addr.sixtofour is not None:  # 2002:AABB:CCDD::/48, relayed to AA.BB.CC.DD
        return [addr.sixtofour]
    if addr.teredo is not None:  # 2001:0::/32: the relay server and the (XOR-obfuscated) client
        return list(addr.teredo)
    # Deprecated IPv4-compatible form ::a.b.c.d (not :: and ::1, which are IPv6 themselves).
    if int(addr) >> 32 == 0 and int(addr) > 1:
        return [ipaddress.IPv4Address(int(addr))]
    return []


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """``inet_aton`` semantics (what ``getaddrinfo`` accepts): 1-4 parts, each decimal, 0x-hex or 0-octal.

    Hand-written rather than ``socket.inet_aton`` so the result does not depend on the platform's libc (glibc
    also ignores anything after a space, for example). Returns None when ``host`` is not such a number.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            values.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]+", part):
            values.append(int(part, 8))
        elif re.fullmatch(r"[0-9]+", part):
            if len(part) > 1 and part.startswith("0"):
                return None  # "08", "09": invalid octal
            values.append(int(part))
        else:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << 8 * (5 - len(values)) | last
    return ipaddress.IPv4Address(number)


def _looks_numeric(label: str) -> bool:
    return bool(re.fullmatch(r"(0[xX][0-9a-fA-F]*|[0-9]+)", label))


@dataclass(frozen=True)
class HostVerdict:
    """How a host is judged: ``kind`` is one of ok, loopback, unspecified, link-local, metadata, multicast,
    reserved; ``address`` is the IP when the host is (or normalises to) a literal address."""

    host: str
    kind: str
    address: IPAddress | None = None

    @property
    def allowed_without_loopback(self) -> bool:
        return self.kind == "ok"


def classify_ip(addr: IPAddress) -> str:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            addr = ipaddress.IPv6Address(addr.compressed.split("%", 1)[0])
        if addr in METADATA_ADDRESSES or addr in AWS_LINK_LOCAL_V6:
            return "metadata"
        if addr.is_unspecified:
            return "unspecified"
        if addr.is_loopback:
            return "loopback"
        # A wrapper is as bad as the worst address it wraps (a Teredo address names two).
        kinds = [classify_ip(v4) for v4 in _embedded_ipv4(addr)]
        if kinds:
            return next((k for k in kinds if k not in ("ok", "loopback")), None) or (
                "loopback" if "loopback" in kinds else "ok"
            )
    if addr in METADATA_ADDRESSES:
        return "metadata"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK:
        return "unspecified"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_reserved:
        return "reserved"
    return "ok"


def classify_host(host: str) -> HostVerdict:
    """Normalise a URL host (no brackets, no port) the way the client stack would, and judge it.

    Raises :class:`AddressRefused` for hosts that are malformed or ambiguous.
    """
    if not host:
        raise AddressRefused("host is empty")
    h = host
    if "%" in h:
        # Only an IPv6 zone id may carry "%" (percent-encoded as %25 in URLs); strip it for judging.
        addr_part, _, zone = unquote(h).partition("%")
        if ":" not in addr_part or not re.fullmatch(r"[A-Za-z0-9_.\-]+", zone):
            raise AddressRefused(f"host {host!r} contains percent-encoding, which is refused")
        h = addr_part
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressRefused(f"host {host!r} is not a valid internationalised name") from None
    h = h.lower()
    if h.endswith(".") and not h.endswith(".."):
        h = h[:-1]
    if ":" in h:
        try:
            v6 = ipaddress.IPv6Address(h)
        except ValueError:
            raise AddressRefused(f"host {host!r} is not a valid IPv6 address") from None
        return HostVerdict(h, classify_ip(v6), v6)
    if not re.fullmatch(r"[a-z0-9_\-.]+", h) or ".." in h or h.startswith("."):
        raise AddressRefused(f"host {host!r} contains characters not allowed in a host name")
    v4 = _parse_ipv4_loose(h)
    if v4 is not None:
        return HostVerdict(h, classify_ip(v4), v4)
    if _looks_numeric(h.rsplit(".", 1)[-1]):
        raise AddressRefused(f"host {host!r} looks numeric but is not a valid IPv4 address")
    if h in METADATA_HOSTNAMES:
        return HostVerdict(h, "metadata")
    if h in LOOPBACK_HOSTNAMES or h.endswith(".localhost"):
        return HostVerdict(h, "loopback")
    return HostVerdict(h, "ok")


_KIND_TEXT = {
    "unspecified": "an unspecified address",
    "link-local": "a link-local address",
    "metadata": "a cloud metadata endpoint",
    "multicast": "a multicast/broadcast address",
    "reserved": "a reserved address",
    "loopback": "a loopback address",
}


def _describe(verdict: HostVerdict, original: str) -> str:
    # Show the address an IPv4 trick stands for (2130706433 = 127.0.0.1); IPv6 spellings speak for themselves.
    address = verdict.address
    if isinstance(address, ipaddress.IPv4Address) and str(address) != original:
        shown = f"{original} (= {address})"
    elif isinstance(address, ipaddress.IPv6Address) and _embedded_ipv4(address):
        shown = f"{original} (wraps {', '.join(map(str, _embedded_ipv4(address)))})"
    else:
        shown = original
    return f"{shown} is {_KIND_TEXT[verdict.kind]}"


def refuse_verdict(verdict: HostVerdict, original: str, what: str, allow_loopback: bool) -> None:
    if verdict.kind == "ok":
        return
    if verdict.kind == "loopback":
        if allow_loopback:
            return
        raise AddressRefused(
            f"{what} host {_describe(verdict, original)}; loopback clusters are allowed only when "
            "BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS is set"
        )
    raise AddressRefused(f"{what} host {_describe(verdict, original)}, which is refused")


# --- connect time -------------------------------------------------------------------------------------------


_resolver: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


@dataclass(frozen=True)
class CheckedUrl:
    scheme: str
    host: str
    port: int
    verdict: HostVerdict


DEFAULT_PORTS = {"https": 443, "http": 80, "socks5": 1080}


def check_url(url: object, what: str, *, schemes: tuple[str, ...], allow_loopback: bool) -> CheckedUrl:
    """Judge a URL something will connect to; :class:`AddressRefused` names what is wrong (the host is judged
    before the rest, so a URL aimed at a metadata address is always refused as that)."""
    if not isinstance(url, str) or not url:
        raise AddressRefused(f"{what} is missing or not a string")
    # Refused outright: parsers (urllib3, Go net/url, WHATWG) disagree on these, which is how address filters
    # are bypassed.
    if re.search(r"[\s\\\x00-\x1f\x7f]", url):
        raise AddressRefused(f"{what} contains whitespace, backslashes or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"{what} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower() if "://" in url else ""
    if scheme not in schemes:
        got = scheme + "://" if scheme else "no scheme"
        raise AddressRefused(f"{what} must use {' or '.join(f'{s}://' for s in schemes)} (got {got})")
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host = hostport[1 : hostport.find("]")] if "]" in hostport else ""
    else:
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    if not host:
        raise AddressRefused(f"{what} has no host")
    try:
        verdict = classify_host(host)
    except AddressRefused as exc:
        raise AddressRefused(f"{what} {exc}") from None
    refuse_verdict(verdict, host, what, allow_loopback)
    if "@" in parts.netloc:
        raise AddressRefused(
            f"{what} must not contain user info (user:password@host); give credentials separately"
        )
    if parts.query or parts.fragment:
        raise AddressRefused(f"{what} must not have a query or fragment")
    if port == 0:
        raise AddressRefused(f"{what} has port 0")
    return CheckedUrl(scheme, verdict.host, port or DEFAULT_PORTS.get(scheme, 443), verdict)


def _resolver_pool() -> concurrent.futures.ThreadPoolExecutor:
    """A small per-process pool for lookups; rebuilt after fork (prefork workers), whose threads do not survive."""
    global _resolver
    pid = os.getpid()
    if _resolver is None or _resolver[0] != pid:
        _resolver = (pid, concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns"))
    return _resolver[1]


def check_host_at_connect(
    host: str, port: int, *, allow_loopback: bool | None = None, timeout: float = 10.0
) -> str:
    """Resolve ``host`` once, refuse if ANY address is forbidden, and return the IP to connect to (pin).

    The same rules as the static check, applied to what DNS says now, so a name cannot be re-pointed at
    a forbidden address after registration (DNS rebinding). See the module docstring for how to pin.
    Raises :class:`AddressRefused` (forbidden address, unresolvable name, resolver timeout).
    """
    loopback_ok = loopback_allowed(allow_loopback)
    verdict = classify_host(host.strip("[]"))
    refuse_verdict(verdict, host, "server", loopback_ok)
    if verdict.address is not None:
        return str(verdict.address)
    # getaddrinfo has no timeout of its own; bound the wait (the lookup itself ends with the resolver's
    # timeout).
    future = _resolver_pool().submit(socket.getaddrinfo, verdict.host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise NameNotResolved(f"host {host!r} did not resolve within {timeout:g} s") from None
    except OSError as exc:
        raise NameNotResolved(f"host {host!r} does not resolve ({exc.strerror or exc})") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise NameNotResolved(f"host {host!r} does not resolve")
    for addr in addresses:
        kind = classify_ip(addr)
        if kind == "ok" or (kind == "loopback" and loopback_ok):
            continue
        suffix = (
            "; loopback clusters are allowed only when BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS is set"
            if kind == "loopback"
            else ", which is refused"
        )
        raise AddressRefused(f"host {host!r} resolves to {addr}, {_KIND_TEXT[kind]}{suffix}")
    return str(addresses[0])
