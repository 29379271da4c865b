"""The broker serving HTTPS (--tls-cert-file/--tls-key-file) with a certificate from
`jitmesh certs`, and a real sidecar that trusts it only through JITMESH_BROKER_CA_FILE."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from injector.certs import WebhookCerts, write_webhook_certs
from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies" / "grant"
POD = PodRef("api-7d9c", "5d1e0000-0000-4000-8000-0000000000aa")


@pytest.fixture
def certs(tmp_path: Path) -> WebhookCerts:
    return write_webhook_certs(tmp_path / "certs", dns_names=["localhost"], ips=["127.0.0.1"])


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
           certs: WebhookCerts) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES).url, tls_cert_file=certs.cert_file, tls_key_file=certs.key_file,
                          ca_file=certs.ca_file)


def trusting(certs: WebhookCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))


def test_the_broker_serves_https_only_and_names_an_https_issuer(broker: BrokerHandle, certs: WebhookCerts) -> None:
    assert broker.url.startswith("https://127.0.0.1:")
    doc = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server", verify=trusting(certs)).json()
    assert doc["issuer"] == broker.url and doc["token_endpoint"] == f"{broker.url}/token"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{broker.url}/healthz", timeout=5)  # the system's CAs do not know this one
    with pytest.raises(httpx.HTTPError):
        httpx.get(broker.url.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP
    r = httpx.post(f"{broker.url}/token", verify=trusting(certs), timeout=10, data={
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": broker.mint("payments", "api", pod=POD),
        "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-db", "scope": "read"})
    assert r.status_code == 200, r.text


def sidecar(broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path,
            extra: dict[str, str]) -> SidecarProcess:
    sa = tmp_path / f"sa-{len(extra)}"
    sa.write_text(broker.mint("payments", "api", pod=POD, ttl=3600))
    return make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa, ttl=60,
                        extra={"JITMESH_BACKOFF_INITIAL": "0.2", "JITMESH_BACKOFF_MAX": "0.5", **extra})


@pytest.mark.parametrize("how", ["file", "inline"])
def test_a_sidecar_given_the_ca_gets_tokens_and_follows_revocations_over_https(
        broker: BrokerHandle, certs: WebhookCerts, make_sidecar: Callable[..., SidecarProcess],
        tmp_path: Path, how: str) -> None:
    # inline: JITMESH_BROKER_CA, as the injector sets it from --broker-ca-file
    given = ({"JITMESH_BROKER_CA_FILE": str(certs.ca_file)} if how == "file"
             else {"JITMESH_BROKER_CA": certs.ca_file.read_text()})
    sc = sidecar(broker, make_sidecar, tmp_path, given)
    deadline = time.monotonic() + 20
    while not sc.token_file("orders-db").exists() or not any(
            e.get("event") == "events.subscribed" for e in sc.events()):
        assert time.monotonic() < deadline, sc.output()[-2000:]
        time.sleep(0.05)


def test_a_sidecar_without_the_ca_refuses_the_broker_and_writes_nothing(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = sidecar(broker, make_sidecar, tmp_path, {})
    deadline = time.monotonic() + 20
    failed: list[dict[str, Any]] = []
    while len(failed) < 2:
        assert time.monotonic() < deadline, sc.output()[-2000:]
        failed = [e for e in sc.events() if e.get("event") == "token.refresh_failed"]
        time.sleep(0.05)
    assert all(e["reason"] == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in str(e["detail"]) for e in failed)
    assert not sc.token_file("orders-db").exists() and not sc.ready()
