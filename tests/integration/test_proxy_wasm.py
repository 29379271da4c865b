"""In-process evaluation: the broker builds the access policy as Wasm with the pinned OPA and
serves it with an ETag; the proxy evaluates it on wasmtime through OPA's Wasm ABI, and agrees
with OPA itself (docs/contract.md §7)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.opa_wasm import OPAWasm, bundle_parts
from proxy.policy_input import build_input
from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream
from tests.integration.revocation_support import wait_for

POLICIES = Path(__file__).resolve().parents[2] / "policies"
BUNDLE = "/v1/access-policy/bundle"


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], opa_bin: str) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES).url, access_policy_dir=POLICIES, opa_bin=opa_bin)


def sa_headers(broker: BrokerHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {broker.mint('demo', 'orders')}"}


def fetch(broker: BrokerHandle, **headers: str) -> httpx.Response:
    return httpx.get(broker.url + BUNDLE, headers={**sa_headers(broker), **headers}, timeout=90)


def test_the_broker_serves_the_wasm_bundle_with_an_etag_and_304_when_unchanged(broker: BrokerHandle) -> None:
    first = fetch(broker)
    assert first.status_code == 200 and first.headers["content-type"] == "application/gzip"
    wasm, data = bundle_parts(first.content)
    assert wasm.startswith(b"\0asm") and "access" in data["jitmesh"]  # type: ignore[index,operator]
    again = fetch(broker, **{"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_the_bundle_needs_an_authenticated_caller(broker: BrokerHandle) -> None:
    r = httpx.get(broker.url + BUNDLE, timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def test_a_policy_needing_a_builtin_the_wasm_target_lacks_fails_loudly_at_build(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], opa_bin: str,
        tmp_path: Path) -> None:
    bad = tmp_path / "access"
    bad.mkdir()
    (bad / "access.rego").write_text('package jitmesh.access\n\n'
                                     'decision := {"allow": false, "reasons": [time.diff(input.a, input.b)]}\n')
    broker = broker_factory(make_opa(POLICIES).url, access_policy_dir=bad, opa_bin=opa_bin)
    r = fetch(broker)
    assert r.status_code == 503
    assert "builtins the Wasm target lacks: time.diff" in r.json()["error_description"]
    assert "--opa-url" in r.json()["error_description"]
    assert "access_policy.build_failed" in broker.output()


INPUTS = [
    ("GET", "/orders/42", "read", "orders-api"), ("GET", "/orders", "read", "orders-api"),
    ("DELETE", "/orders/42", "read", "orders-api"), ("DELETE", "/orders/42", "read write", "orders-api"),
    ("PATCH", "/orders", "write", "orders-api"), ("GET", "/orders/42/items", "read", "orders-api"),
    ("GET", "/", "", "orders-api"), ("GET", "/healthz", "", "orders-api"), ("GET", "/payments/1", "read", "ledger"),
    ("get", "/orders/a%2Fb", "read", "orders-api"), ("POST", "/orders?x=1&x=2", "write", "orders-api"),
]


def test_wasm_evaluation_agrees_with_opa_eval(broker: BrokerHandle, make_opa: Callable[..., Any]) -> None:
    wasm, data = bundle_parts(fetch(broker).content)
    policy = OPAWasm(wasm, data, "jitmesh/access/decision")
    opa = make_opa(POLICIES)
    docs: list[Any] = [build_input(method=m, path=p, host="orders", scheme="http", headers=[("accept", "*/*")],
                                   client=("10.0.0.1", 1), claims={"sub": "s", "scope": s, "aud": a}, audience=a)
                       for m, p, s, a in INPUTS]
    docs += [{}, {"parsed_path": "x"}, {"destination": {"audience": 1}}]
    for doc in docs:
        ref = httpx.post(opa.url + "/v1/data/jitmesh/access/decision", json={"input": doc}).json().get("result")
        assert policy.evaluate(doc) == ref, doc


@pytest.fixture
def wasm_proxy(broker: BrokerHandle, make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> ProxyProcess:
    return make_proxy(broker, ["orders-api"], upstream=upstream.url)  # no --opa-url: in-process


def token(broker: BrokerHandle) -> str:
    r = broker.exchange(broker.mint("demo", "demo-app"), "orders-api", scope="read", ttl=120)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_a_proxy_without_opa_allows_and_denies_in_process(broker: BrokerHandle, wasm_proxy: ProxyProcess) -> None:
    headers = {"Authorization": f"Bearer {token(broker)}"}
    assert httpx.get(wasm_proxy.url + "/orders/1", headers=headers).status_code == 200
    denied = httpx.delete(wasm_proxy.url + "/orders/1", headers=headers)
    assert denied.status_code == 403
    assert denied.json()["reasons"] == ["DELETE /orders/{id} needs scope(s) write; the token has read"]
    ready = httpx.get(wasm_proxy.metrics_url + "/readyz").json()
    assert ready["policy"]["loaded"] and ready["policy"]["etag"]


def test_opa_wasm_refuses_a_module_that_is_not_wasm() -> None:
    from jitmesh.opa_wasm import WasmPolicyError

    with pytest.raises(WasmPolicyError, match="not a Wasm module"):
        asyncio.run(asyncio.to_thread(OPAWasm, b"nope", {}, "x"))


def write_access_data(policy_dir: Path, extra_endpoint: dict[str, Any] | None = None) -> None:
    data = json.loads((POLICIES / "data.json").read_text())
    if extra_endpoint is not None:
        data["jitmesh"]["access"]["audiences"]["orders-api"]["endpoints"].append(extra_endpoint)
    (policy_dir / "data.json").write_text(json.dumps({"jitmesh": {"access": data["jitmesh"]["access"]}}))


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    policy_dir = tmp_path / "access"
    policy_dir.mkdir()
    (policy_dir / "access.rego").write_bytes((POLICIES / "access.rego").read_bytes())
    write_access_data(policy_dir)
    return policy_dir


DELETE_WITH_READ = {"methods": ["DELETE"], "path": "/orders/{id}", "scopes": ["read"]}


def test_a_changed_policy_is_announced_and_in_force_at_the_proxy_within_seconds(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], opa_bin: str,
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream, policy_dir: Path) -> None:
    broker = broker_factory(make_opa(POLICIES).url, access_policy_dir=policy_dir, opa_bin=opa_bin)
    # the fallback poll is far off: only the broker's announcement can bring the change in time
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, extra=["--policy-refresh", "3600"])
    headers = {"Authorization": f"Bearer {token(broker)}"}
    assert httpx.delete(proxy.url + "/orders/1", headers=headers).status_code == 403
    before = httpx.get(proxy.metrics_url + "/readyz").json()["policy"]["etag"]
    write_access_data(policy_dir, DELETE_WITH_READ)
    changed = time.monotonic()
    wait_for(lambda: httpx.delete(proxy.url + "/orders/1", headers=headers).status_code == 200, timeout=15,
             what="the rebuilt policy in force at the proxy")
    took = time.monotonic() - changed
    assert took < 6.0, f"the new policy took {took:.1f} s to reach the proxy"
    assert httpx.get(proxy.metrics_url + "/readyz").json()["policy"]["etag"] != before
    assert "events.policy_announced" in proxy.output()


def test_a_policy_that_fails_to_build_keeps_the_one_in_force_and_is_audited(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], opa_bin: str,
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream, policy_dir: Path) -> None:
    broker = broker_factory(make_opa(POLICIES).url, access_policy_dir=policy_dir, opa_bin=opa_bin)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, extra=["--policy-refresh", "3600"])
    headers = {"Authorization": f"Bearer {token(broker)}"}
    etag = fetch(broker).headers["etag"]
    (policy_dir / "broken.rego").write_text("package jitmesh.access\n\nthis is not rego\n")
    wait_for(lambda: "access_policy.build_failed" in broker.output(), timeout=15, what="the failed build logged")
    audit = httpx.get(broker.url + "/v1/admin/audit", params={"event": "error"}, headers=broker.admin_headers())
    failures = [r for r in audit.json()["records"] if r["details"].get("error") == "access_policy_build_failed"]
    assert failures and "rego_parse_error" in failures[0]["details"]["error_description"]
    assert failures[0]["details"]["kept_etag"] == etag
    assert fetch(broker).headers["etag"] == etag  # the old module is still served
    assert httpx.get(proxy.url + "/orders/1", headers=headers).status_code == 200
    assert httpx.delete(proxy.url + "/orders/1", headers=headers).status_code == 403
    (policy_dir / "broken.rego").unlink()  # fixed: the next change builds and is announced again
    write_access_data(policy_dir, DELETE_WITH_READ)
    wait_for(lambda: httpx.delete(proxy.url + "/orders/1", headers=headers).status_code == 200, timeout=15,
             what="the fixed policy in force at the proxy")


def test_the_bundle_builds_from_a_config_map_volume_without_its_hidden_copies(opa_bin: str, tmp_path: Path) -> None:
    from pdp.access_bundle import build

    volume = tmp_path / "policies"
    stamped = volume / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for name in ("access.rego", "data.json"):
        (stamped / name).write_bytes((POLICIES / name).read_bytes())
        (volume / name).symlink_to(Path("..data") / name)
    (volume / "..data").symlink_to(stamped.name)
    wasm, data = bundle_parts(build(opa_bin, volume, "jitmesh/access/decision"))
    assert wasm.startswith(b"\0asm") and "access" in data["jitmesh"]  # type: ignore[index,operator]
