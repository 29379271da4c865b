"""`jitmesh certs`: a CA, a serving certificate for the given names, and the caBundle."""

from __future__ import annotations

import base64
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from injector.certs import CertError, write_webhook_certs
from jitmesh.cli import main


def test_serving_certificate_carries_the_names_and_chains_to_the_ca(tmp_path: Path) -> None:
    written = write_webhook_certs(tmp_path, ["jitmesh-injector.jitmesh.svc"], ["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(written.ca_file.read_bytes())
    leaf = x509.load_pem_x509_certificate(written.cert_file.read_bytes())
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["jitmesh-injector.jitmesh.svc"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    written = write_webhook_certs(tmp_path, ["webhook.example"], [])
    assert stat.S_IMODE(written.key_file.stat().st_mode) == 0o600


def test_cli_prints_the_base64_ca_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path), "--dns-name", "a.b.svc", "--ip", "127.0.0.1"], environ={}) == 0
    printed = capsys.readouterr().out.strip()
    assert base64.b64decode(printed) == (tmp_path / "ca.crt").read_bytes()


@pytest.mark.parametrize(("dns", "ips", "problem"), [
    ([], [], "at least one --dns-name or --ip"),
    (["bad name"], [], "--dns-name 'bad name'"),
    ([], ["300.1.1.1"], "--ip '300.1.1.1'"),
])
def test_bad_names_are_refused_naming_the_flag(tmp_path: Path, dns: list[str], ips: list[str], problem: str) -> None:
    with pytest.raises(CertError, match=problem):
        write_webhook_certs(tmp_path, dns, ips)


def test_an_existing_ca_is_not_replaced_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["certs", "--out", str(tmp_path), "--dns-name", "a.b.svc"]
    assert main(args, environ={}) == 0
    first = (tmp_path / "ca.crt").read_bytes()
    capsys.readouterr()
    assert main(args, environ={}) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == first
    assert main([*args, "--force"], environ={}) == 0
    assert (tmp_path / "ca.crt").read_bytes() != first
