"""Reading a token-exchange request (pure): the form body and the RFC 8693 parameters."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from pdp.exchange import TokenRequest, parse_form, parse_token_request
from pdp.http.errors import OAuthError

FORM = "application/x-www-form-urlencoded"


def params(**changes: str | list[str]) -> dict[str, list[str]]:
    base: dict[str, list[str]] = {"grant_type": [GRANT_TYPE_TOKEN_EXCHANGE], "subject_token": ["a.b.c"],
                                  "subject_token_type": [TOKEN_TYPE_JWT], "audience": ["orders-db"]}
    for k, v in changes.items():
        base[k] = [v] if isinstance(v, str) else v
    return base


def error_of(p: dict[str, list[str]]) -> tuple[int, str]:
    with pytest.raises(OAuthError) as info:
        parse_token_request(p)
    return info.value.status, info.value.error


def test_minimal_request_is_read() -> None:
    assert parse_token_request(params()) == TokenRequest("a.b.c", "orders-db", (), None)


def test_scope_and_ttl_are_read() -> None:
    r = parse_token_request(params(scope="read write read", requested_ttl="60"))
    assert r.scopes == ("read", "write") and r.requested_ttl == 60


def test_empty_scope_means_no_scopes() -> None:
    assert parse_token_request(params(scope="")).scopes == ()


@pytest.mark.parametrize("scope", [" read", "read ", "read  write", 'a"b', "a\\b", "caf\u00e9"])
def test_malformed_scope_is_invalid_scope(scope: str) -> None:
    assert error_of(params(scope=scope)) == (400, "invalid_scope")


def test_two_audiences_are_invalid_request() -> None:
    assert error_of(params(audience=["a", "b"])) == (400, "invalid_request")


@pytest.mark.parametrize("audience", ["a,b", "a b"])
def test_audience_naming_several_is_invalid_request(audience: str) -> None:
    assert error_of(params(audience=audience)) == (400, "invalid_request")


def test_repeated_parameter_is_invalid_request() -> None:
    assert error_of(params(scope=["read", "read"])) == (400, "invalid_request")


def test_other_grant_type_is_unsupported_grant_type() -> None:
    assert error_of(params(grant_type="password")) == (400, "unsupported_grant_type")


def test_unsupported_requested_token_type_is_invalid_request() -> None:
    assert error_of(params(requested_token_type="urn:ietf:params:oauth:token-type:saml2")) == (400, "invalid_request")


def test_form_body_is_parsed_with_plus_as_space() -> None:
    assert parse_form(b"scope=read+write&a=%2F", FORM) == {"scope": ["read write"], "a": ["/"]}


def test_form_content_type_with_charset_is_accepted() -> None:
    assert parse_form(b"a=1", f"{FORM}; charset=utf-8") == {"a": ["1"]}


@pytest.mark.parametrize("body", [b"a=\xff", b"a=%ff", b"a=%c3%28"])
def test_non_utf8_form_is_invalid_request(body: bytes) -> None:
    with pytest.raises(OAuthError, match="UTF-8"):
        parse_form(body, FORM)


def test_other_content_type_is_invalid_request() -> None:
    with pytest.raises(OAuthError, match="x-www-form-urlencoded"):
        parse_form(b"{}", "application/json")


def test_too_many_fields_is_invalid_request() -> None:
    with pytest.raises(OAuthError):
        parse_form("&".join(f"f{i}=1" for i in range(500)).encode(), FORM)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_body_is_either_read_or_refused_with_an_oauth_error(body: bytes) -> None:
    try:
        parse_token_request(parse_form(body, FORM))
    except OAuthError as err:
        assert err.status == 400 and err.error in {"invalid_request", "unsupported_grant_type", "invalid_scope"}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["grant_type", "subject_token", "subject_token_type", "audience", "scope",
                                        "requested_ttl"]), st.text(max_size=30), max_size=6))
def test_any_field_values_are_read_or_refused_with_an_oauth_error(fields: dict[str, str]) -> None:
    body = urlencode({**{"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT}, **fields})
    try:
        req = parse_token_request(parse_form(body.encode(), FORM))
    except OAuthError as err:
        assert err.status == 400
    else:
        assert req.audience and req.subject_token
        assert req.requested_ttl is None or req.requested_ttl > 0


RESOURCES = {"https://orders.example.com/api": "orders-api"}


def test_a_known_resource_names_its_audience() -> None:
    p = params(resource="https://orders.example.com/api")
    del p["audience"]
    assert parse_token_request(p, RESOURCES).audience == "orders-api"


def test_a_resource_that_agrees_with_the_audience_is_accepted() -> None:
    p = params(resource="https://orders.example.com/api", audience="orders-api")
    assert parse_token_request(p, RESOURCES).audience == "orders-api"


def test_an_unknown_resource_is_invalid_target() -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_request(params(resource="https://elsewhere.example.com/"), RESOURCES)
    assert err.value.error == "invalid_target" and "names no known audience" in err.value.description


def test_a_resource_that_disagrees_with_the_audience_is_invalid_target() -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_request(params(resource="https://orders.example.com/api", audience="orders-db"), RESOURCES)
    assert err.value.error == "invalid_target" and "must agree" in err.value.description


def test_neither_audience_nor_resource_is_invalid_request() -> None:
    p = params()
    del p["audience"]
    with pytest.raises(OAuthError) as err:
        parse_token_request(p, RESOURCES)
    assert err.value.error == "invalid_request" and "missing audience" in err.value.description


def test_a_postgresql_login_may_be_asked_for() -> None:
    req = parse_token_request(params(requested_token_type="urn:jitmesh:token-type:postgresql"))
    assert req.issued_token_type == "urn:jitmesh:token-type:postgresql" and req.refresh_login is None


def test_refresh_login_names_a_broker_login() -> None:
    name = "jitmesh_login_" + "0123456789abcdef" * 2
    req = parse_token_request(params(requested_token_type="urn:jitmesh:token-type:postgresql", refresh_login=name))
    assert req.refresh_login == name


@pytest.mark.parametrize("name", ["postgres", "jitmesh_login_x", "jitmesh_login_" + "A" * 32])
def test_a_refresh_login_that_is_no_broker_login_is_invalid_request(name: str) -> None:
    p = params(requested_token_type="urn:jitmesh:token-type:postgresql", refresh_login=name)
    assert error_of(p) == (400, "invalid_request")


def test_refresh_login_without_the_postgresql_token_type_is_invalid_request() -> None:
    assert error_of(params(refresh_login="jitmesh_login_" + "0" * 32)) == (400, "invalid_request")
