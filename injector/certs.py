"""A CA and a serving certificate for the webhook, and the caBundle the API server is given."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest serving-certificate lifetime common clients accept


class CertError(ValueError):
    """A bad name or address; the message says which."""


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_ca(common_name: str = "jitmesh-webhook-ca", days: int = CA_DAYS) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def issue(ca: KeyPair, common_name: str, dns_names: list[str] | tuple[str, ...] = (),
          ips: list[str] | tuple[str, ...] = (), *, client: bool = False, organization: str | None = None,
          days: int = LEAF_DAYS) -> KeyPair:
    """A leaf certificate signed by `ca`: for serving (SANs required) or, with `client`, for a client."""
    sans: list[x509.GeneralName] = [x509.DNSName(_dns_name(d)) for d in dns_names]
    sans += [x509.IPAddress(_ip(a)) for a in ips]
    if not client and not sans:
        raise CertError("a serving certificate needs at least one --dns-name or --ip; the API server "
                        "checks the webhook's name against them")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization)).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                              else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return KeyPair(builder.sign(ca.key, hashes.SHA256()), key)


def _dns_name(raw: str) -> str:
    name = raw.strip().lower()
    labels = name.split(".")
    if not name or len(name) > 253 or any(
            not lbl or len(lbl) > 63 or lbl.startswith("-") or lbl.endswith("-")
            or not all(ch.isalnum() or ch == "-" for ch in lbl) or not lbl.isascii() for lbl in labels):
        raise CertError(f"--dns-name {raw!r} is not a DNS name, e.g. jitmesh-injector.jitmesh.svc")
    return name


def _ip(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(raw.strip())
    except ValueError:
        raise CertError(f"--ip {raw!r} is not an IPv4 or IPv6 address, e.g. 127.0.0.1") from None


@dataclass(frozen=True)
class WebhookCerts:
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_bundle: str  # base64 of the CA's PEM, as `caBundle` in a webhook configuration


def write_webhook_certs(out: Path, dns_names: list[str], ips: list[str], *, replace_ca: bool = False) -> WebhookCerts:
    """Write ca.crt, tls.crt and tls.key into `out` (the key readable by its owner only).
    A CA already in `out` is kept from being replaced by accident: every webhook
    configuration and sidecar that trusts it would stop trusting the new certificate."""
    if not replace_ca and (out / "ca.crt").exists():
        raise CertError(f"{out / 'ca.crt'} already exists; pass --force to replace the CA (then give every "
                        "webhook configuration and sidecar that trusts the old one the new caBundle)")
    ca = make_ca()
    common_name = dns_names[0] if dns_names else ips[0] if ips else "jitmesh-injector"
    leaf = issue(ca, common_name, dns_names, ips)
    out.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = out / "ca.crt", out / "tls.crt", out / "tls.key"
    ca_file.write_bytes(ca.cert_pem())
    cert_file.write_bytes(leaf.cert_pem())
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf.key_pem())
    key_file.chmod(0o600)
    return WebhookCerts(ca_file, cert_file, key_file, base64.b64encode(ca.cert_pem()).decode())
