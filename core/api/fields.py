"""Serializer fields shared by the apps' APIs.

:class:`OutboundURLField` is the one way a URL given by a user, that this service or a cluster on its behalf will
connect to (a cluster's ingress, an S3 endpoint), enters the API: ``http``/``https`` only, no user info (a
password in a URL ends up in logs and manifests; credentials have their own write-only fields), no query or
fragment, and a host the outbound-address guard (``core.netguard``) accepts: no metadata, link-local,
unspecified, multicast or reserved address, and loopback only where loopback clusters are allowed. The check is
static; whoever connects still checks the address it resolves at connect time (``check_host_at_connect``).
"""

from __future__ import annotations

from rest_framework import serializers

from .. import netguard

OUTBOUND_SCHEMES = ("http", "https")


def check_outbound_url(url: str, what: str = "URL") -> str:
    """``url`` unchanged if it may be connected to; else :class:`ValueError` with a message for the client."""
    netguard.check_url(url, what, schemes=OUTBOUND_SCHEMES, allow_loopback=netguard.loopback_allowed())
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
