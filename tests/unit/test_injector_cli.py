"""`jitmesh injector` refuses bad flags before serving, naming the flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from injector.certs import write_webhook_certs
from jitmesh.cli import main


@pytest.fixture
def tls(tmp_path: Path) -> list[str]:
    certs = write_webhook_certs(tmp_path, [], ["127.0.0.1"])
    return ["--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file)]


@pytest.mark.parametrize(("args", "problem"), [
    (["--broker-url", "http://b:8080", "--listen", "nonsense"], "--listen='nonsense' is not HOST:PORT"),
    ([], "--broker-url is required"),
    (["--broker-url", "ftp://b"], "--broker-url='ftp://b' is not an http(s) URL"),
    (["--broker-url", "http://b:8080", "--default-audiences", "ok,../x"], "audience '../x' is not valid"),
    (["--broker-url", "http://b:8080", "--agent-port", "70000"], "--agent-port=70000 is not a TCP port"),
    (["--broker-url", "https://b:8443", "--broker-ca-file", "/no/such/ca.pem"],
     "--broker-ca-file='/no/such/ca.pem' cannot be read"),
    (["--broker-url", "https://b:8443", "--broker-ca-file", "/etc/hostname"],
     "--broker-ca-file='/etc/hostname' holds no usable PEM certificate"),
])
def test_bad_flag_exits_2_naming_it(tls: list[str], args: list[str], problem: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["injector", *tls, *args], environ={}) == 2
    assert problem in capsys.readouterr().err


def test_missing_certificate_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["injector", "--broker-url", "http://b:8080", "--tls-cert-file", str(tmp_path / "none.crt"),
                 "--tls-key-file", str(tmp_path / "none.key")], environ={})
    assert code == 2
    assert "--tls-cert-file" in capsys.readouterr().err


def test_flags_come_from_the_environment_too(tls: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["injector", *tls], environ={"JITMESH_BROKER_URL": "gopher://b"}) == 2
    assert "--broker-url='gopher://b'" in capsys.readouterr().err


@pytest.mark.skipif("KUBERNETES_SERVICE_HOST" in os.environ, reason="running inside a pod: in-cluster config exists")
def test_without_api_access_the_injector_does_not_start(tls: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["injector", *tls, "--broker-url", "http://b:8080"], environ={}) == 2
    assert "no Kubernetes API access" in capsys.readouterr().err
