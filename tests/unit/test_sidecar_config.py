"""SidecarConfig.from_env: the contract variables, the extras, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import AudienceSpec, ConfigError, SidecarConfig


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    sa = tmp_path / "sa-token"
    sa.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    return {
        "JITMESH_BROKER_URL": "https://broker.jitmesh.svc:8443/",
        "JITMESH_AUDIENCES": "orders-db, payments.api",
        "JITMESH_SCOPES_ORDERS_DB": "read write",
        "JITMESH_TTL": "300",
        "JITMESH_SA_TOKEN_FILE": str(sa),
        "JITMESH_TOKEN_DIR": str(tmp_path / "tokens"),
        "JITMESH_LISTEN": "127.0.0.1:8099",
    }


def test_contract_variables_are_read(env: dict[str, str], tmp_path: Path) -> None:
    c = SidecarConfig.from_env(env)
    assert c.broker_url == "https://broker.jitmesh.svc:8443"
    assert c.token_endpoint == "https://broker.jitmesh.svc:8443/token"
    assert c.audiences == (AudienceSpec("orders-db", ("read", "write")), AudienceSpec("payments.api", ()))
    assert c.ttl == 300
    assert (c.listen_host, c.listen_port) == ("127.0.0.1", 8099)
    assert c.token_dir == tmp_path / "tokens"


def test_defaults_of_the_optional_variables(env: dict[str, str]) -> None:
    for name in ("JITMESH_TTL", "JITMESH_LISTEN", "JITMESH_TOKEN_DIR"):
        del env[name]
    c = SidecarConfig.from_env(env)
    assert c.ttl is None and c.listen_port == 8099 and str(c.token_dir) == "/var/run/jitmesh"
    assert c.file_mode == 0o640 and c.file_gid is None and c.refresh_after == (0.5, 0.8)
    assert c.reask_jitter == 1.0


def test_token_group_names_the_group_of_the_token_files(env: dict[str, str]) -> None:
    env["JITMESH_TOKEN_GROUP"] = "2000"
    assert SidecarConfig.from_env(env).file_gid == 2000


def test_token_group_wins_over_the_older_file_group_name(env: dict[str, str]) -> None:
    env.update({"JITMESH_TOKEN_GROUP": "2000", "JITMESH_FILE_GROUP": "3000"})
    assert SidecarConfig.from_env(env).file_gid == 2000


def test_a_bad_token_group_is_named_by_its_variable(env: dict[str, str]) -> None:
    env["JITMESH_TOKEN_GROUP"] = "no-such-group-jitmesh"
    with pytest.raises(ConfigError, match="JITMESH_TOKEN_GROUP='no-such-group-jitmesh'"):
        SidecarConfig.from_env(env)


def test_extras_are_read(env: dict[str, str]) -> None:
    env.update({"JITMESH_FILE_MODE": "0640", "JITMESH_FILE_GROUP": "0", "JITMESH_REFRESH_AFTER": "0.6-0.7",
                "JITMESH_BACKOFF_INITIAL": "0.5", "JITMESH_BACKOFF_MAX": "10", "JITMESH_EXPIRY_MARGIN": "0",
                "JITMESH_REASK_JITTER": "0"})
    c = SidecarConfig.from_env(env)
    assert (c.file_mode, c.file_gid, c.refresh_after) == (0o640, 0, (0.6, 0.7))
    assert (c.backoff_initial, c.backoff_max, c.expiry_margin, c.reask_jitter) == (0.5, 10.0, 0.0, 0.0)


def test_an_inline_ca_is_read_and_builds_the_tls_context(env: dict[str, str], tmp_path: Path) -> None:
    from injector.certs import write_webhook_certs

    pem = write_webhook_certs(tmp_path / "certs", ["broker.test"], []).ca_file.read_text()
    env["JITMESH_BROKER_CA"] = pem
    c = SidecarConfig.from_env(env)
    context = c.tls_verify()
    assert c.broker_ca_pem == pem and not isinstance(context, bool)
    assert [x["subject"] for x in context.get_ca_certs()] == [((("commonName", "jitmesh-webhook-ca"),),)]
    env["JITMESH_BROKER_CA_FILE"] = str(tmp_path / "certs" / "ca.crt")
    with pytest.raises(ConfigError, match="are both set"):
        SidecarConfig.from_env(env)


@pytest.mark.parametrize(("extra", "message"), [
    ({"JITMESH_BROKER_CA": "not a certificate"}, "JITMESH_BROKER_CA holds no usable PEM certificate"),
    ({"JITMESH_BROKER_CA": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
     "JITMESH_BROKER_CA holds no usable PEM certificate"),
])
def test_a_bad_inline_ca_is_refused_by_name(env: dict[str, str], extra: dict[str, str], message: str) -> None:
    env.update(extra)
    with pytest.raises(ConfigError, match=message):
        SidecarConfig.from_env(env)


def test_a_ca_file_that_is_not_pem_is_refused_by_name(env: dict[str, str], tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    env["JITMESH_BROKER_CA_FILE"] = str(garbage)
    with pytest.raises(ConfigError, match=r"JITMESH_BROKER_CA_FILE=.*no usable PEM certificate"):
        SidecarConfig.from_env(env)


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_a_bad_reask_jitter_is_refused_by_name(env: dict[str, str], value: str) -> None:
    env["JITMESH_REASK_JITTER"] = value
    with pytest.raises(ConfigError, match="JITMESH_REASK_JITTER"):
        SidecarConfig.from_env(env)


def test_config_is_frozen(env: dict[str, str]) -> None:
    c = SidecarConfig.from_env(env)
    with pytest.raises(AttributeError):
        c.ttl = 5  # type: ignore[misc]


@pytest.mark.parametrize(("name", "value"), [
    ("JITMESH_AUDIENCES", ""),
    ("JITMESH_AUDIENCES", " , "),
    ("JITMESH_AUDIENCES", "../etc"),
    ("JITMESH_AUDIENCES", ".hidden"),
    ("JITMESH_AUDIENCES", "a,a"),
    ("JITMESH_AUDIENCES", "orders-db,orders.db"),
    ("JITMESH_BROKER_URL", ""),
    ("JITMESH_BROKER_URL", "broker:8443"),
    ("JITMESH_BROKER_URL", "ftp://broker"),
    ("JITMESH_BROKER_URL", "http://"),
    ("JITMESH_BROKER_URL", "http://broker:notaport"),
    ("JITMESH_BROKER_URL", "https://user:pw@broker"),
    ("JITMESH_TTL", "5m"),
    ("JITMESH_TTL", "0"),
    ("JITMESH_TTL", "-30"),
    ("JITMESH_LISTEN", "8099"),
    ("JITMESH_LISTEN", "127.0.0.1:"),
    ("JITMESH_LISTEN", "127.0.0.1:99999"),
    ("JITMESH_LISTEN", ":8099"),
    ("JITMESH_SCOPES_ORDERS_DB", 'read "quoted"'),
    ("JITMESH_FILE_MODE", "rw-r--r--"),
    ("JITMESH_FILE_MODE", "0666"),
    ("JITMESH_FILE_MODE", "0040"),
    ("JITMESH_FILE_GROUP", "no-such-group-jitmesh"),
    ("JITMESH_REFRESH_AFTER", "0.9-0.5"),
    ("JITMESH_REFRESH_AFTER", "1.5"),
    ("JITMESH_BACKOFF_MAX", "nan"),
    ("JITMESH_BACKOFF_INITIAL", "0"),
    ("JITMESH_REQUEST_TIMEOUT", "inf"),
    ("JITMESH_SHUTDOWN_TIMEOUT", "-1"),
    ("JITMESH_BROKER_CA_FILE", "/nonexistent/ca.pem"),
])
def test_bad_value_is_refused_naming_the_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(ConfigError, match=name):
        SidecarConfig.from_env(env)


def test_missing_broker_url_is_refused(env: dict[str, str]) -> None:
    del env["JITMESH_BROKER_URL"]
    with pytest.raises(ConfigError, match="JITMESH_BROKER_URL is not set"):
        SidecarConfig.from_env(env)


def test_unreadable_sa_token_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    env["JITMESH_SA_TOKEN_FILE"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"JITMESH_SA_TOKEN_FILE=.*cannot be read"):
        SidecarConfig.from_env(env)


def test_empty_sa_token_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    env["JITMESH_SA_TOKEN_FILE"] = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"JITMESH_SA_TOKEN_FILE=.*empty"):
        SidecarConfig.from_env(env)


def test_token_dir_that_is_a_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env["JITMESH_TOKEN_DIR"] = str(tmp_path / "file")
    with pytest.raises(ConfigError, match="JITMESH_TOKEN_DIR"):
        SidecarConfig.from_env(env)


def test_backoff_ceiling_below_the_first_delay_is_refused(env: dict[str, str]) -> None:
    env.update({"JITMESH_BACKOFF_INITIAL": "10", "JITMESH_BACKOFF_MAX": "5"})
    with pytest.raises(ConfigError, match="JITMESH_BACKOFF_MAX"):
        SidecarConfig.from_env(env)



def test_a_postgresql_kind_is_read_per_audience(env: dict[str, str]) -> None:
    env["JITMESH_KIND_ORDERS_DB"] = "postgresql"
    config = SidecarConfig.from_env(env)
    assert [(a.audience, a.kind) for a in config.audiences] == [("orders-db", "postgresql"), ("payments.api", "jwt")]


def test_an_unknown_kind_is_refused_naming_the_variable(env: dict[str, str]) -> None:
    env["JITMESH_KIND_ORDERS_DB"] = "mysql"
    with pytest.raises(ConfigError, match="JITMESH_KIND_ORDERS_DB"):
        SidecarConfig.from_env(env)


def test_every_client_of_the_broker_shares_one_tls_context(env: dict[str, str]) -> None:
    c = SidecarConfig.from_env(env)
    assert c.tls_verify() is c.tls_verify()
    assert c.tls_verify() is SidecarConfig.from_env(env).tls_verify()
    assert c.tls_verify().get_ca_certs() or c.tls_verify().cert_store_stats()["x509_ca"] > 0


def test_a_plain_http_broker_loads_no_ca_and_its_context_trusts_nothing(env: dict[str, str]) -> None:
    import ssl

    env["JITMESH_BROKER_URL"] = "http://127.0.0.1:8080"
    context = SidecarConfig.from_env(env).tls_verify()
    assert context.cert_store_stats()["x509_ca"] == 0
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
