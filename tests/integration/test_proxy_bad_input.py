"""Bad input and faults at `jitmesh proxy` (docs/contract.md §7): each is a clear 4xx/5xx
answer naming the problem, never a 500 or a traceback, and never a forwarded request."""

from __future__ import annotations

import base64
import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from jitmesh.procs import free_port
from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def env(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> dict[str, Any]:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=opa.url,
                       extra=["--leeway", "0", "--header-timeout", "1"])
    return {"opa": opa, "broker": broker, "proxy": proxy}


def token(broker: BrokerHandle, audience: str = "orders-api", ttl: int = 120) -> str:
    r = broker.exchange(broker.mint("demo", "demo-app"), audience, scope="read", ttl=ttl)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def get(proxy: ProxyProcess, headers: Any = None, path: str = "/orders/1") -> httpx.Response:
    r = httpx.get(proxy.url + path, headers=headers, timeout=10)
    assert r.status_code != 500 and "Traceback" not in r.text
    return r


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def _claims_of(t: str) -> dict[str, Any]:
    return dict(jwt.decode(t, options={"verify_signature": False}))


def assert_invalid_token(r: httpx.Response, words: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith('Bearer realm="jitmesh", error="invalid_token"')
    assert words in r.json()["error_description"]


def test_no_token_is_401_with_a_bearer_challenge(env: dict[str, Any]) -> None:
    r = get(env["proxy"])
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="jitmesh"'


def test_a_malformed_authorization_header_is_401_invalid_token(env: dict[str, Any]) -> None:
    assert_invalid_token(get(env["proxy"], {"Authorization": "Bearer not-a-jwt"}), "not a well-formed JWT")


def test_two_authorization_headers_are_400_invalid_request(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    r = get(env["proxy"], [("Authorization", f"Bearer {t}"), ("Authorization", f"Bearer {t}")])
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_a_token_for_another_audience_is_401(env: dict[str, Any]) -> None:
    t = token(env["broker"], audience="payments-api")
    assert_invalid_token(get(env["proxy"], {"Authorization": f"Bearer {t}"}), "does not serve")


def test_an_expired_token_is_401(env: dict[str, Any]) -> None:
    t = token(env["broker"], ttl=1)
    time.sleep(max(0.0, _claims_of(t)["exp"] - time.time()) + 1.1)
    assert_invalid_token(get(env["proxy"], {"Authorization": f"Bearer {t}"}), "expired")


def test_an_hs256_token_is_401(env: dict[str, Any]) -> None:
    real = token(env["broker"])
    kid = jwt.get_unverified_header(real)["kid"]
    forged = jwt.encode(_claims_of(real), "a-shared-secret-long-enough-for-hs256!", algorithm="HS256",
                        headers={"typ": "at+jwt", "kid": kid})
    assert_invalid_token(get(env["proxy"], {"Authorization": f"Bearer {forged}"}), "HS256")


def test_an_alg_none_token_is_401(env: dict[str, Any]) -> None:
    real = token(env["broker"])
    kid = jwt.get_unverified_header(real)["kid"]
    forged = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(_claims_of(real))}."
    assert_invalid_token(get(env["proxy"], {"Authorization": f"Bearer {forged}"}), "'none'")


def test_a_flood_of_unknown_kids_is_401_and_costs_the_broker_at_most_one_jwks_call(env: dict[str, Any]) -> None:
    claims = _claims_of(token(env["broker"]))
    key = ec.generate_private_key(ec.SECP256R1())

    def fetches() -> float:
        text = httpx.get(env["proxy"].metrics_url + "/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("jitmesh_proxy_jwks_")))

    before = fetches()
    with httpx.Client(timeout=10) as client:
        for i in range(100):
            forged = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": f"stranger-{i}"})
            r = client.get(env["proxy"].url + "/orders/1", headers={"Authorization": f"Bearer {forged}"})
            assert_invalid_token(r, "unknown key")
    assert fetches() - before <= 1


def test_an_oversized_header_is_431_and_the_proxy_keeps_serving(env: dict[str, Any]) -> None:
    r = get(env["proxy"], {"X-Big": "x" * 40000})
    assert r.status_code == 431
    assert get(env["proxy"], {"Authorization": f"Bearer {token(env['broker'])}"}).status_code == 200


def test_a_slowloris_client_is_cut_off_with_408_and_others_are_served(env: dict[str, Any]) -> None:
    sock = socket.create_connection(("127.0.0.1", env["proxy"].port), timeout=10)
    sock.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: x\r\n")
    answer = b""
    for i in range(40):  # one header line every 0.25 s, for up to 10 s; the bound is 1 s
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            answer = sock.recv(1024)
            break
        sock.sendall(f"X-Drip-{i}: y\r\n".encode())
        if i == 1:
            assert get(env["proxy"], {"Authorization": f"Bearer {token(env['broker'])}"}).status_code == 200
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_the_upstream_down_is_502_with_a_clear_body(make_opa: Callable[..., Any],
                                                    broker_factory: Callable[..., BrokerHandle],
                                                    make_proxy: Callable[..., ProxyProcess]) -> None:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], upstream=f"http://127.0.0.1:{free_port()}", opa_url=opa.url)
    r = get(proxy, {"Authorization": f"Bearer {token(broker)}"})
    assert r.status_code == 502
    assert r.json()["error"] == "bad_gateway" and "cannot be reached" in r.json()["error_description"]


def test_a_policy_that_errors_is_a_403_audited_as_a_policy_error(make_opa: Callable[..., Any],
                                                                 broker_factory: Callable[..., BrokerHandle],
                                                                 make_proxy: Callable[..., ProxyProcess],
                                                                 upstream: Upstream, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "access.rego").write_text('package jitmesh.access\n\ndecision := {"allow": to_number("x") > 0}\n')
    broker = broker_factory(make_opa(POLICIES).url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=make_opa(broken).url)
    r = get(proxy, {"Authorization": f"Bearer {token(broker)}"})
    assert r.status_code == 403 and r.json()["reasons"][0].startswith("policy error")
    assert '"outcome":"policy_error"' in proxy.output()


def test_opa_unreachable_is_503(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
                                make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> None:
    broker = broker_factory(make_opa(POLICIES).url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=f"http://127.0.0.1:{free_port()}")
    r = get(proxy, {"Authorization": f"Bearer {token(broker)}"})
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"


def test_a_workload_the_policy_does_not_let_serve_gets_no_stream_and_answers_503(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> None:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], service_account="not-a-server", ready=False, upstream=upstream.url,
                       opa_url=opa.url)
    r = get(proxy, {"Authorization": f"Bearer {token(broker)}"})
    assert r.status_code == 503
    ready = httpx.get(proxy.metrics_url + "/readyz")
    assert ready.status_code == 503 and "may not serve audience(s) orders-api" in ready.json()["events_refused"]


def test_a_path_with_dot_segments_is_400_and_never_forwarded(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    with socket.create_connection(("127.0.0.1", env["proxy"].port), timeout=10) as sock:
        sock.sendall(f"GET /orders/%2e%2e/admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b". or .. segments" in answer
