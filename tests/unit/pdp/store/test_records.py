"""What both stores accept and refuse, and how they name where they are, as pure functions."""

from __future__ import annotations

import math

import pytest

from pdp.store import AuditRecord, Revocation, StoreError
from pdp.store.postgres import describe
from pdp.store.records import check_revocation, clamp_limit, encode_details
from pdp.store.sqlite import path_from_url


def record(**fields: object) -> AuditRecord:
    values: dict[str, object] = {"decision_id": "d-1", "time": 1.0, "event": "issued"}
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///relative/store.db", "relative/store.db"),
    ("sqlite:////var/lib/jitmesh/store.db", "/var/lib/jitmesh/store.db"),
    ("sqlite:///.jitmesh/broker.db?mode=rwc", ".jitmesh/broker.db"),
])
def test_sqlite_url_names_a_relative_or_absolute_file(url: str, path: str) -> None:
    assert path_from_url(url) == path


def test_sqlite_url_without_a_path_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="no file path"):
        path_from_url("sqlite:///")


def test_postgres_description_leaves_the_password_out() -> None:
    where = describe("postgresql://jitmesh:s3cret@db.example:6543/broker")
    assert where == "PostgreSQL db.example:6543/broker" and "s3cret" not in where


def test_details_are_encoded_as_compact_json() -> None:
    assert encode_details(record(details={"scopes": ["read"], "ttl": 300})) == '{"scopes":["read"],"ttl":300}'


@pytest.mark.parametrize("details", [{"x": object()}, {"x": math.nan}, {"x": math.inf}, {("tuple",): "key"}],
                         ids=["object", "nan", "inf", "tuple-key"])
def test_details_that_are_not_json_are_a_store_error(details: dict[object, object]) -> None:
    with pytest.raises(StoreError, match="JSON-serializable"):
        encode_details(record(details=details))


@pytest.mark.parametrize("fields", [{"subject": "a\x00b"}, {"audience": "\x00"}, {"details": {"k": "v\x00"}}],
                         ids=["subject", "audience", "details"])
def test_nul_characters_are_refused_because_postgresql_cannot_store_them(fields: dict[str, object]) -> None:
    with pytest.raises(StoreError, match="NUL"):
        encode_details(record(**fields))


def test_a_record_without_decision_id_or_event_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="decision_id and an event"):
        encode_details(record(event=""))


def test_revocation_kind_must_be_one_of_the_four() -> None:
    bad = Revocation(id="r", kind="namespace", value="payments", reason="", created_at=0.0,  # type: ignore[arg-type]
                     created_by="admin")
    with pytest.raises(StoreError, match="jti, subject, pod_uid, audience"):
        check_revocation(bad)


@pytest.mark.parametrize(("asked", "used"), [(-5, 0), (0, 0), (50, 50), (10**9, 10_000)])
def test_query_limits_are_clamped(asked: int, used: int) -> None:
    assert clamp_limit(asked) == used
