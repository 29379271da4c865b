"""The access policy's input (docs/contract.md §7), built from a request."""

from __future__ import annotations

from typing import Any

from proxy.policy_input import build_input

CLAIMS = {"sub": "system:serviceaccount:demo:demo-app", "scope": "read", "aud": "orders-api"}


def _input(path: str = "/orders/12?x=1", headers: list[tuple[str, str]] | None = None,
           method: str = "get") -> dict[str, Any]:
    return build_input(method=method, path=path, host="orders.demo:8080", scheme="http",
                       headers=headers or [], client=("10.0.0.7", 51234), claims=CLAIMS, audience="orders-api")


def test_the_request_attributes_have_the_opa_envoy_shape() -> None:
    http = _input()["attributes"]["request"]["http"]
    assert http == {"method": "GET", "path": "/orders/12?x=1", "host": "orders.demo:8080", "scheme": "http",
                    "headers": {}}


def test_the_source_address_is_an_envoy_socket_address() -> None:
    assert _input()["attributes"]["source"] == {"address": {"socketAddress": {"address": "10.0.0.7",
                                                                              "portValue": 51234}}}


def test_headers_are_lower_cased_and_repeated_ones_joined() -> None:
    headers = _input(headers=[("Accept", "a/b"), ("X-Trace", "1"), ("x-trace", "2")])["attributes"]["request"]
    assert headers["http"]["headers"] == {"accept": "a/b", "x-trace": "1, 2"}


def test_credentials_and_forged_proxy_headers_are_withheld_from_the_policy() -> None:
    headers = [("Authorization", "Bearer t"), ("DPoP", "p"), ("Cookie", "c=1"), ("X-Jitmesh-Subject", "admin"),
               ("x-ok", "1")]
    assert _input(headers=headers)["attributes"]["request"]["http"]["headers"] == {"x-ok": "1"}


def test_parsed_path_is_the_segments_without_the_query() -> None:
    assert _input("/orders/12/items?x=1")["parsed_path"] == ["orders", "12", "items"]


def test_parsed_path_decodes_before_splitting_as_opa_envoy_does() -> None:
    assert _input("/orders/a%2Fb%20c")["parsed_path"] == ["orders", "a", "b c"]


def test_the_root_path_parses_as_one_empty_segment_as_in_opa_envoy() -> None:
    assert _input("/")["parsed_path"] == [""]


def test_parsed_query_keeps_every_value_and_blank_ones() -> None:
    assert _input("/x?a=1&a=2&b=&c")["parsed_query"] == {"a": ["1", "2"], "b": [""], "c": [""]}


def test_the_token_claims_and_destination_audience_are_given() -> None:
    doc = _input()
    assert (doc["token"], doc["destination"]) == (CLAIMS, {"audience": "orders-api"})


def test_a_normal_path_has_no_problem() -> None:
    from proxy.policy_input import target_problem

    assert target_problem("/orders/1?x=../y") is None


def test_dot_segments_plain_or_encoded_are_refused() -> None:
    from proxy.policy_input import target_problem

    for path in ("/orders/../admin", "/orders/./1", "/orders/%2e%2e/admin", "/orders/1%2F..%2Fadmin", "/.."):
        assert target_problem(path) is not None, path


def test_a_target_that_is_not_a_path_is_refused() -> None:
    from proxy.policy_input import target_problem

    assert target_problem("@evil.example/x") is not None
