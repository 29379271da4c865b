"""The sidecar's DPoP switch and upstream variables (SidecarConfig.from_env), and the forwarder's
outbound URL: errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from injector.certs import make_ca
from sidecar.config import ConfigError, SidecarConfig, UpstreamSpec
from sidecar.upstream import UpstreamForwarder


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    sa = tmp_path / "sa-token"
    sa.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    return {
        "JITMESH_BROKER_URL": "http://broker:8080",
        "JITMESH_AUDIENCES": "payments-api,ledger.v2",
        "JITMESH_SA_TOKEN_FILE": str(sa),
        "JITMESH_TOKEN_DIR": str(tmp_path / "tokens"),
        "JITMESH_LISTEN": "127.0.0.1:8099",
    }


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(make_ca("upstream-ca").cert_pem())
    return path


def test_upstreams_are_read_per_audience(env: dict[str, str], ca_file: Path) -> None:
    env.update({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://payments.example:8443/api",
                "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100",
                "JITMESH_UPSTREAM_CA_PAYMENTS_API": str(ca_file),
                "JITMESH_DPOP": "true"})
    c = SidecarConfig.from_env(env)
    assert c.dpop is True
    assert c.upstreams == (UpstreamSpec("payments-api", "https://payments.example:8443/api", "127.0.0.1", 15100,
                                        ca_file),)
    assert c.upstream("ledger.v2") is None


def test_without_upstream_variables_there_are_no_upstreams_and_no_dpop(env: dict[str, str]) -> None:
    c = SidecarConfig.from_env(env)
    assert c.upstreams == () and c.dpop is False


@pytest.mark.parametrize(("extra", "named"), [
    ({"JITMESH_DPOP": "yes"}, "JITMESH_DPOP"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "ftp://payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100"}, "JITMESH_UPSTREAM_URL_PAYMENTS_API"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://u:p@payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100"}, "user information"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://payments.example/"}, "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "0.0.0.0:15100"}, "loopback only"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:8099"}, "JITMESH_LISTEN"),
    ({"JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100"}, "JITMESH_UPSTREAM_URL_PAYMENTS_API is not"),
    ({"JITMESH_UPSTREAM_URL_ORDERS": "https://orders.example/"}, "names no audience"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "http://payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100",
      "JITMESH_UPSTREAM_CA_PAYMENTS_API": "/nonexistent"}, "plain http"),
    ({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "https://payments.example/",
      "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100",
      "JITMESH_UPSTREAM_CA_PAYMENTS_API": "/nonexistent"}, "not a readable PEM file"),
])
def test_bad_dpop_and_upstream_variables_are_refused_by_name(env: dict[str, str], extra: dict[str, str],
                                                               named: str) -> None:
    env.update(extra)
    with pytest.raises(ConfigError, match=named):
        SidecarConfig.from_env(env)


@pytest.mark.parametrize(("base", "path", "query", "expected"), [
    ("https://p.example/api/", "/orders/7", "x=1", "https://p.example/api/orders/7?x=1"),
    ("https://p.example", "/", "", "https://p.example/"),
    ("https://p.example:8443/api?tenant=a", "/orders", "x=%2F", "https://p.example:8443/api/orders?tenant=a&x=%2F"),
])
def test_the_request_path_and_query_are_appended_to_the_upstreams(base: str, path: str, query: str,
                                                                  expected: str) -> None:
    forwarder = UpstreamForwarder(UpstreamSpec("a", base, "127.0.0.1", 15100), tokens=_NoTokens())
    assert forwarder.outbound_url(path, query) == expected


class _NoTokens:
    def token(self, audience: str) -> None:
        return None


def test_a_refused_upstream_url_is_never_repeated_with_its_password(env: dict[str, str]) -> None:
    env.update({"JITMESH_UPSTREAM_URL_PAYMENTS_API": "ftp://svc:hunter2@payments.example/",
                "JITMESH_UPSTREAM_LISTEN_PAYMENTS_API": "127.0.0.1:15100"})
    with pytest.raises(ConfigError) as refused:
        SidecarConfig.from_env(env)
    assert "hunter2" not in str(refused.value) and "ftp://***@payments.example/" in str(refused.value)
