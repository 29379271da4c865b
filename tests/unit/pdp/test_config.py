"""`jitmesh broker` flags become one validated BrokerConfig; bad values name their flag."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from jitmesh.cli import apply_env_defaults
from pdp.config import BrokerConfig, ConfigError, add_broker_flags


def parse(argv: list[str], environ: dict[str, str] | None = None) -> BrokerConfig:
    parser = argparse.ArgumentParser()
    add_broker_flags(parser)
    apply_env_defaults(parser, environ or {})
    return BrokerConfig.from_args(parser.parse_args(argv))


@pytest.fixture
def jwks(tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    return str(path)


def test_defaults_follow_the_spec(jwks: str) -> None:
    c = parse(["--jwks-file", jwks])
    assert c.policy_path == "jitmesh/authz/decision" and c.subject_audience == "jitmesh"
    assert c.store_url == "sqlite:///.jitmesh/broker.db" and c.max_ttl == 3600 and c.default_ttl == 300
    assert c.attestation == "jwks" and c.shadow_policy_path is None
    assert c.issuer == "http://127.0.0.1:8080"


def test_flags_can_come_from_jitmesh_environment_variables(jwks: str) -> None:
    c = parse([], {"JITMESH_JWKS_FILE": jwks, "JITMESH_MAX_TTL": "600", "JITMESH_ISSUER": "https://b.example/"})
    assert c.max_ttl == 600 and c.issuer == "https://b.example"


def test_default_ttl_follows_a_shorter_max_ttl(jwks: str) -> None:
    assert parse(["--jwks-file", jwks, "--max-ttl", "60"]).default_ttl == 60


def test_shadow_policy_path_is_kept(jwks: str) -> None:
    assert parse(["--jwks-file", jwks, "--shadow-policy-path", "jitmesh/candidate/authz/decision"]
                 ).shadow_policy_path == "jitmesh/candidate/authz/decision"


@pytest.mark.parametrize(("argv", "flag"), [
    (["--max-ttl", "0"], "--max-ttl"),
    (["--default-ttl", "-1"], "--default-ttl"),
    (["--max-ttl", "60", "--default-ttl", "120"], "--default-ttl"),
    (["--key-rotation", "0"], "--key-rotation"),
    (["--approval-ttl", "0"], "--approval-ttl"),
    (["--listen", "8080"], "--listen"),
    (["--issuer", "not a url"], "--issuer"),
    (["--opa-timeout", "0"], "--opa-timeout"),
    (["--policy-path", ""], "--policy-path"),
    (["--store", "redis://x"], "--store"),
    (["--admin-token-file", "/no/such/file"], "--admin-token-file"),
    (["--subject-audience", " "], "--subject-audience"),
    (["--tls-key-file", "/no/such/key"], "--tls-key-file needs --tls-cert-file"),
    (["--tls-cert-file", "/no/such/cert", "--tls-key-file", "/no/such/key"], "--tls-cert-file '/no/such/cert'"),
])
def test_bad_value_is_refused_naming_its_flag(jwks: str, argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse(["--jwks-file", jwks, *argv])


def test_tls_serves_https_and_the_default_issuer_says_so(jwks: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    c = parse(["--jwks-file", jwks, "--tls-cert-file", str(cert), "--tls-key-file", str(key)])
    assert (c.tls_cert_file, c.tls_key_file, c.issuer) == (cert, key, "https://127.0.0.1:8080")


def test_jwks_mode_needs_exactly_one_key_source(jwks: str) -> None:
    with pytest.raises(ConfigError, match="--jwks-file or --jwks-url"):
        parse([])
    with pytest.raises(ConfigError, match="--jwks-file or --jwks-url"):
        parse(["--jwks-file", jwks, "--jwks-url", "https://api/openid/v1/jwks"])


def test_tokenreview_mode_needs_no_jwks() -> None:
    assert parse(["--attestation", "tokenreview"]).attestation == "tokenreview"


def test_resources_map_uris_to_audiences(jwks: str) -> None:
    c = parse(["--jwks-file", jwks, "--resource", "https://a.example/api=orders-api",
               "--resource", "https://b.example=payments-api"])
    assert c.resources == {"https://a.example/api": "orders-api", "https://b.example": "payments-api"}


def test_resources_come_from_the_environment_comma_separated(jwks: str) -> None:
    c = parse(["--jwks-file", jwks], {"JITMESH_RESOURCE": "https://a.example=orders-api,https://b.example=ledger"})
    assert c.resources == {"https://a.example": "orders-api", "https://b.example": "ledger"}


@pytest.mark.parametrize("pair", ["orders-api", "https://a.example=", "relative/path=orders-api",
                                  "https://a.example#frag=orders-api"])
def test_a_bad_resource_is_refused_naming_it(jwks: str, pair: str) -> None:
    with pytest.raises(ConfigError, match="--resource"):
        parse(["--jwks-file", jwks, "--resource", pair])


def test_a_resource_given_for_two_audiences_is_refused(jwks: str) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse(["--jwks-file", jwks, "--resource", "https://a.example=x", "--resource", "https://a.example=y"])


def test_max_subject_token_age_defaults_to_a_day_and_zero_turns_it_off(jwks: str) -> None:
    assert parse(["--jwks-file", jwks]).max_subject_token_age == 86400
    assert parse(["--jwks-file", jwks, "--max-subject-token-age", "0"]).max_subject_token_age is None


def test_audit_retention_defaults_to_ninety_days_and_takes_units(jwks: str) -> None:
    assert parse(["--jwks-file", jwks]).audit_retention == 90 * 86400
    assert parse(["--jwks-file", jwks, "--audit-retention", "12h"]).audit_retention == 12 * 3600
    assert parse(["--jwks-file", jwks, "--audit-retention", "7200"]).audit_retention == 7200


@pytest.mark.parametrize("value", ["forever", "-1d", "0", "1x", ""])
def test_an_audit_retention_that_is_no_duration_names_the_flag(jwks: str, value: str) -> None:
    with pytest.raises(ConfigError, match="--audit-retention"):
        parse(["--jwks-file", jwks, f"--audit-retention={value}"])


def test_an_audit_retention_shorter_than_the_longest_token_is_refused(jwks: str) -> None:
    with pytest.raises(ConfigError, match="--max-ttl"):
        parse(["--jwks-file", jwks, "--audit-retention", "30m", "--max-ttl", "3600"])


def test_a_reader_token_file_that_does_not_exist_is_refused(jwks: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--reader-token-file"):
        parse(["--jwks-file", jwks, "--reader-token-file", str(tmp_path / "nope")])


def test_shadow_policy_dir_is_the_candidates_directory(jwks: str, tmp_path: Path) -> None:
    c = parse(["--jwks-file", jwks, "--shadow-policy-path", "jitmesh/candidate/authz/decision",
               "--shadow-policy-dir", str(tmp_path)])
    assert c.shadow_policy_dir == tmp_path
    assert parse(["--jwks-file", jwks]).shadow_policy_dir is None


def test_shadow_policy_dir_needs_the_candidates_path(jwks: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --shadow-policy-path"):
        parse(["--jwks-file", jwks, "--shadow-policy-dir", str(tmp_path)])


def test_shadow_policy_dir_must_be_a_directory(jwks: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        parse(["--jwks-file", jwks, "--shadow-policy-path", "a/b", "--shadow-policy-dir", str(tmp_path / "none")])
