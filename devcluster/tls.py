"""Throwaway PKI for the emulated API server: a CA and a server certificate signed by it.

Keys are ECDSA P-256 (fast to generate, accepted by Go's and Python's TLS stacks).  The server certificate
names localhost, 127.0.0.1, ::1 and the bind host, so clients verify it against the CA carried in the
kubeconfig's `certificate-authority-data` without skipping verification.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain only reads files; the key lives in a private temp dir for the call only.
        with tempfile.TemporaryDirectory(prefix="devcluster-tls-") as d:
            cert = Path(d) / "tls.crt"
            key = Path(d) / "tls.key"
            cert.write_bytes(self.cert_pem + self.ca_pem)
            key.touch(mode=0o600)
            key.write_bytes(self.key_pem)
            ctx.load_cert_chain(str(cert), str(key))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Authority:
    """A certificate authority that issues server and client certificates (the real control plane needs
    several: API server, etcd, and one client identity per component)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, cn: str = "devcluster-ca", days: int = 365) -> Authority:
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(
        self,
        cn: str,
        *,
        orgs: tuple[str, ...] = (),
        hosts: list[str] | None = None,
        server: bool = False,
        client: bool = False,
        days: int = 365,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `cn` in organisations `orgs` (Kubernetes reads O as groups).

        A server certificate names localhost, 127.0.0.1, ::1, kubernetes.default.svc and `hosts`."""
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _sans(hosts: list[str] | None) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc")]
    for h in ["127.0.0.1", "::1", *(hosts or [])]:
        try:
            ip = x509.IPAddress(ipaddress.ip_address(h))
            if ip not in sans:
                sans.append(ip)
        except ValueError:
            if x509.DNSName(h) not in sans:
                sans.append(x509.DNSName(h))
    return sans


def generate(hosts: list[str] | None = None, days: int = 365) -> Pki:
    """A fresh CA and a server certificate for loopback plus `hosts`."""
    ca = Authority.create("devcluster-ca", days)
    cert_pem, key_pem = ca.issue("devcluster-apiserver", hosts=hosts, server=True, days=days)
    return Pki(ca_pem=ca.cert_pem, cert_pem=cert_pem, key_pem=key_pem)
