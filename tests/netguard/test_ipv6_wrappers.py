"""The outbound-address guard against IPv6 spellings of forbidden places: AWS's IPv6 link-local services and
IPv4 addresses wrapped in IPv6 (mapped, compatible, translated, NAT64, 6to4, Teredo)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from core import netguard
from core.netguard import AddressRefused, check_host_at_connect, classify_host, classify_ip


def _teredo(server: str, client: str) -> str:
    """The Teredo address (2001:0::/32) of ``client`` behind relay ``server`` (client bits XOR-obfuscated)."""
    value = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address(value))


REFUSED = [
    ("fd00:ec2::254", "metadata"),  # AWS instance metadata over IPv6
    ("fd00:ec2::253", "metadata"),  # AWS DNS resolver
    ("fd00:ec2::23", "metadata"),  # EKS Pod Identity agent (hands out role credentials)
    ("fd00:ec2::123", "metadata"),  # AWS time sync: the whole fd00:ec2::/32 is AWS's
    ("2002:a9fe:a9fe::", "metadata"),  # 6to4 wrapping 169.254.169.254
    ("2002:a9fe:a9fe:1234:5678::1", "metadata"),
    ("2002:a9fe:0101::", "link-local"),  # 6to4 wrapping 169.254.1.1
    ("2002:0:1::", "unspecified"),  # 6to4 wrapping 0.0.1.0
    ("2002:e000:1::", "multicast"),  # 6to4 wrapping 224.0.0.1
    (_teredo("65.54.227.120", "169.254.169.254"), "metadata"),  # Teredo client
    (_teredo("169.254.169.254", "8.8.8.8"), "metadata"),  # Teredo server
    (_teredo("65.54.227.120", "169.254.7.7"), "link-local"),
    ("::ffff:169.254.169.254", "metadata"),  # IPv4-mapped
    ("::a9fe:a9fe", "metadata"),  # IPv4-compatible
    ("::ffff:0:a9fe:a9fe", "reserved"),  # IPv4-translated (RFC 2765)
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64
    ("64:ff9b:1::a9fe:a9fe", "reserved"),  # local-use NAT64 (RFC 8215)
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_ipv6_spellings_of_forbidden_places_are_refused(address, kind):
    verdict = classify_host(address)
    assert verdict.kind == kind
    with pytest.raises(AddressRefused, match="which is refused"):
        check_host_at_connect(f"[{address}]", 443, allow_loopback=True)


@pytest.mark.parametrize(
    ("address", "kind"),
    [("2002:7f00:1::", "loopback"), (_teredo("65.54.227.120", "127.0.0.1"), "loopback")],
)
def test_wrapped_loopback_is_loopback(address, kind):
    assert classify_host(address).kind == kind
    with pytest.raises(AddressRefused, match="BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS"):
        check_host_at_connect(address, 443, allow_loopback=False)


def test_refusal_names_the_wrapped_address():
    with pytest.raises(AddressRefused) as caught:
        check_host_at_connect("2002:a9fe:a9fe::", 443, allow_loopback=True)
    assert "wraps 169.254.169.254" in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        "2002:808:808::",  # 6to4 of 8.8.8.8: a public host
        _teredo("65.54.227.120", "8.8.4.4"),
        "2600:1f18::1",  # an ordinary AWS public IPv6 address
        "fd00:ec3::1",  # a ULA just outside AWS's prefix: private networks stay allowed
        "64:ff9b::808:808",
    ],
)
def test_wrappers_of_public_addresses_stay_allowed(address):
    assert classify_host(address).kind == "ok"
    assert check_host_at_connect(address, 443, allow_loopback=False) == address


def test_a_name_resolving_to_a_wrapped_metadata_address_is_refused(monkeypatch):
    """DNS may answer with any of these spellings; the connect-time check judges what it resolved."""

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:a9fe:a9fe::1", port, 0, 0))]

    monkeypatch.setattr(netguard.socket, "getaddrinfo", resolve)
    with pytest.raises(AddressRefused, match=r"resolves to 2002:a9fe:a9fe::1, a cloud metadata endpoint"):
        check_host_at_connect("innocent.example.com", 443, allow_loopback=True)


def test_classify_ip_keeps_its_signature():
    """Other modules (ingress URL and object-store checks) call these public functions."""
    assert classify_ip(ipaddress.ip_address("fd00:ec2::23")) == "metadata"
    assert classify_ip(ipaddress.ip_address("93.184.216.34")) == "ok"
