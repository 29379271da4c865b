"""`/v1/check` request shapes (docs/contract.md §7): nginx `auth_request` and Envoy
`ext_authz` over HTTP as Istio's `envoyExtAuthzHttp` provider sends it (the original method,
the original path appended to the `pathPrefix`, the allowed request headers). Envoy cannot
run here, so its documented shape is pinned against a fake gate."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.gate import Outcome, RequestFacts
from proxy.metrics import ProxyMetrics
from proxy.server import ProxyApp


class FakeGate:
    def __init__(self, allow: bool = True) -> None:
        self.seen: list[RequestFacts] = []
        self.allow = allow

    async def decide(self, facts: RequestFacts) -> Outcome:
        self.seen.append(facts)
        if self.allow:
            return Outcome(200, "allow", "d-1", upstream_headers=[("x-jitmesh-subject", "s"),
                                                                  ("x-jitmesh-scope", "read"),
                                                                  ("x-jitmesh-decision-id", "d-1")])
        return Outcome(403, "deny", "d-1", [("content-type", "application/json")], b'{"error":"access_denied"}')


def call(gate: FakeGate, method: str, path: str, query: bytes = b"",
         headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str]]:
    app = ProxyApp(gate, None, ProxyMetrics())  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or [])], "client": ("10.0.0.9", 4000),
             "scheme": "http"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


ISTIO_HEADERS = [("host", "orders.demo.svc.cluster.local"), ("authorization", "Bearer t"),
                 ("x-forwarded-proto", "https"), ("x-request-id", "r-1")]


def test_envoy_ext_authz_gives_the_original_method_and_path_behind_the_prefix() -> None:
    gate = FakeGate()
    call(gate, "DELETE", "/v1/check/orders/7", b"force=1", ISTIO_HEADERS)
    facts = gate.seen[0]
    assert (facts.method, facts.path, facts.host) == ("DELETE", "/orders/7?force=1", "orders.demo.svc.cluster.local")
    assert ("authorization", "Bearer t") in facts.headers


def test_envoy_ext_authz_of_the_root_path_is_the_root() -> None:
    gate = FakeGate()
    call(gate, "GET", "/v1/check", b"", ISTIO_HEADERS)
    assert gate.seen[0].path == "/"


def test_an_allowed_check_answers_200_with_the_headers_to_pass_upstream() -> None:
    status, headers = call(FakeGate(), "GET", "/v1/check/orders/7", headers=ISTIO_HEADERS)
    assert status == 200
    assert {k: headers[k] for k in ("x-jitmesh-subject", "x-jitmesh-scope", "x-jitmesh-decision-id")} == {
        "x-jitmesh-subject": "s", "x-jitmesh-scope": "read", "x-jitmesh-decision-id": "d-1"}


def test_a_denied_check_answers_the_gate_status() -> None:
    assert call(FakeGate(allow=False), "GET", "/v1/check/orders/7", headers=ISTIO_HEADERS)[0] == 403


def test_nginx_auth_request_gives_the_original_method_and_uri_in_headers() -> None:
    gate = FakeGate()
    call(gate, "GET", "/v1/check", headers=[("host", "front"), ("x-original-method", "POST"),
                                            ("x-original-uri", "/orders?x=1"), ("authorization", "Bearer t")])
    facts = gate.seen[0]
    assert (facts.method, facts.path) == ("POST", "/orders?x=1")
    assert not [k for k, _ in facts.headers if k.startswith("x-original-")]


def test_without_an_upstream_other_paths_are_404_after_the_gate() -> None:
    assert call(FakeGate(), "GET", "/orders/1")[0] == 404


def test_a_path_with_dot_segments_is_400_before_the_gate() -> None:
    gate = FakeGate()
    assert call(gate, "GET", "/orders/../admin")[0] == 400
    assert gate.seen == []


def test_nginx_original_uri_with_dot_segments_is_400() -> None:
    gate = FakeGate()
    status, _ = call(gate, "GET", "/v1/check", headers=[("x-original-method", "GET"),
                                                         ("x-original-uri", "/orders/%2e%2e/admin")])
    assert status == 400 and gate.seen == []


def test_envoy_ext_authz_gives_the_url_a_dpop_proof_names_from_host_and_forwarded_proto() -> None:
    gate = FakeGate()
    call(gate, "DELETE", "/v1/check/orders/7", b"force=1", ISTIO_HEADERS)
    assert gate.seen[0].url == "https://orders.demo.svc.cluster.local/orders/7?force=1"


def test_nginx_auth_request_gives_the_url_a_dpop_proof_names_from_forwarded_host() -> None:
    gate = FakeGate()
    call(gate, "GET", "/v1/check", headers=[("host", "127.0.0.1:9000"), ("x-original-uri", "/orders?a=1"),
                                            ("x-original-method", "POST"), ("x-forwarded-host", "shop.example:8443"),
                                            ("x-forwarded-proto", "https")])
    assert (gate.seen[0].method, gate.seen[0].url) == ("POST", "https://shop.example:8443/orders?a=1")


def test_check_without_forwarded_headers_names_its_own_host_and_scheme() -> None:
    gate = FakeGate()
    call(gate, "GET", "/v1/check", headers=[("host", "proxy.local:9000"), ("x-original-uri", "/orders")])
    assert gate.seen[0].url == "http://proxy.local:9000/orders"


def test_forwarding_names_the_host_header_and_the_listener_scheme() -> None:
    gate = FakeGate(allow=False)
    call(gate, "GET", "/orders/7", b"x=1", [("host", "orders-api.shop.svc:8080"), ("x-forwarded-host", "evil")])
    assert gate.seen[0].url == "http://orders-api.shop.svc:8080/orders/7?x=1"
