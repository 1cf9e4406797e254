"""Serializer fields shared by the apps' APIs.

:class:`OutboundURLField` is the one way a URL given by a user, that this service or a cluster on its behalf will
connect to (a cluster's ingress, an S3 endpoint), enters the API: ``http``/``https`` only, no user info (a
password in a URL ends up in logs and manifests; credentials have their own write-only fields), no query or
fragment, and a host the outbound-address guard (``core.netguard``) accepts: no metadata, link-local,
unspecified, multicast or reserved address, and loopback only where loopback clusters are allowed. The check is
static; whoever connects still checks the address it resolves at connect time (``check_host_at_connect``).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from rest_framework import serializers

from .. import netguard

OUTBOUND_SCHEMES = ("http", "https")


def check_outbound_url(url: str, what: str = "URL") -> str:
    """``url`` unchanged if it may be connected to; else :class:`ValueError` with a message for the client."""
    # Parsers disagree on these (urllib3, Go's net/url, WHATWG), which is how address filters are bypassed.
    if re.search(r"[\s\\\x00-\x1f\x7f]", url):
        raise ValueError(f"{what} contains whitespace, backslashes or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in OUTBOUND_SCHEMES:
        raise ValueError(
            f"{what} must use http:// or https:// (got {scheme + '://' if scheme else 'no scheme'})"
        )
    if "@" in parts.netloc:
        raise ValueError(
            f"{what} must not contain user info (user:password@host); give credentials separately"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    if port == 0:
        raise ValueError(f"{what} has port 0")
    hostport = parts.netloc
    if hostport.startswith("["):
        host = hostport[1 : hostport.find("]")] if "]" in hostport else ""
    else:
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    if not host:
        raise ValueError(f"{what} has no host")
    try:
        verdict = netguard.classify_host(host)
        netguard.refuse_verdict(verdict, host, what, netguard.loopback_allowed())
    except netguard.AddressRefused as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(what) else f"{what} {message}") from None
    return url


class OutboundURLField(serializers.URLField):
    """A URL the service or a cluster will connect to; see the module docstring for what is refused."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_length", 500)
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> str:
        value = super().to_internal_value(data)
        if value:
            try:
                check_outbound_url(value)
            except ValueError as exc:
                raise serializers.ValidationError(str(exc)) from None
        return value
