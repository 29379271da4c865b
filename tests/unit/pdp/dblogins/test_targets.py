"""The targets file: what is accepted, and each refusal naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.dblogins.targets import TargetsError, load_targets, parse_targets


def _write(tmp_path: Path, target: dict[str, Any] | None = None, dsn: str = "host=db.internal dbname=orders "
           "user=jitmesh_admin password=s3cret-admin") -> Path:
    (tmp_path / "admin.dsn").write_text(dsn + "\n")
    doc = {"kind": "postgresql", "admin_dsn_file": "admin.dsn", "tls": {"mode": "disable"},
           "scopes": {"read": ["orders_read"], "write": ["orders_read", "orders_write"]},
           "connection_limit": 3, "owner": "orders_owner"}
    for key, value in (target or {}).items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": {"orders-db": doc}}))
    return path


def _refusal(tmp_path: Path, **target: Any) -> str:
    with pytest.raises(TargetsError) as info:
        load_targets(str(_write(tmp_path, target)))
    return str(info.value)


def test_a_valid_target_takes_host_and_dbname_from_the_admin_dsn(tmp_path: Path) -> None:
    target = load_targets(str(_write(tmp_path))).postgresql["orders-db"]
    assert (target.host, target.port, target.dbname) == ("db.internal", 5432, "orders")
    assert target.roles_for(("write",)) == ("orders_read", "orders_write")
    assert (target.connection_limit, target.admin_pool, target.owner) == (3, 4, "orders_owner")


def test_the_admin_dsn_is_not_in_the_repr(tmp_path: Path) -> None:
    target = load_targets(str(_write(tmp_path))).postgresql["orders-db"]
    assert "s3cret-admin" not in repr(target)


def test_an_unreadable_admin_dsn_file_is_named(tmp_path: Path) -> None:
    message = _refusal(tmp_path, admin_dsn_file="missing.dsn")
    assert "targets.orders-db.admin_dsn_file" in message and "missing.dsn" in message


def test_a_malformed_admin_dsn_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _write(tmp_path, dsn="host=db password='s3cret-admin unterminated")
    with pytest.raises(TargetsError) as info:
        load_targets(str(path))
    assert "admin_dsn_file" in str(info.value) and "s3cret-admin" not in str(info.value)


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.kind" in _refusal(tmp_path, kind="mysql")


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    assert "targets.orders-db.conection_limit" in _refusal(tmp_path, conection_limit=3)


def test_tls_settings_are_required(tmp_path: Path) -> None:
    assert "targets.orders-db.tls" in _refusal(tmp_path, tls=None)


def test_an_unknown_tls_mode_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.tls.mode" in _refusal(tmp_path, tls={"mode": "yes"})


def test_verify_full_needs_a_root_certificate(tmp_path: Path) -> None:
    assert "targets.orders-db.tls.root_cert_file" in _refusal(tmp_path, tls={"mode": "verify-full"})


def test_a_missing_root_certificate_file_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, tls={"mode": "verify-full", "root_cert_file": "nope.pem"})
    assert "tls.root_cert_file" in message and "nope.pem" in message


def test_scopes_are_required(tmp_path: Path) -> None:
    assert "targets.orders-db.scopes" in _refusal(tmp_path, scopes=None)


def test_a_scope_with_no_roles_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.scopes.read" in _refusal(tmp_path, scopes={"read": []})


def test_a_malformed_role_name_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, scopes={"read": ["Orders Read; DROP"]})
    assert "targets.orders-db.scopes.read" in message and "not a role name" in message


def test_the_connection_limit_is_required(tmp_path: Path) -> None:
    assert "targets.orders-db.connection_limit" in _refusal(tmp_path, connection_limit=None)


def test_a_zero_connection_limit_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.connection_limit" in _refusal(tmp_path, connection_limit=0)


def test_an_admin_pool_past_the_bound_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.admin_pool" in _refusal(tmp_path, admin_pool=1000)


def test_the_owner_is_required(tmp_path: Path) -> None:
    assert "targets.orders-db.owner" in _refusal(tmp_path, owner=None)


def test_a_nonpositive_timeout_is_refused(tmp_path: Path) -> None:
    assert "targets.orders-db.timeout" in _refusal(tmp_path, timeout=0)


def test_a_file_that_is_not_yaml_says_where(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match=r"not valid YAML at line [23]"):
        parse_targets("targets:\n  a: [b\n  c: d\n")


def test_a_file_without_targets_is_refused() -> None:
    with pytest.raises(TargetsError, match="one top-level key, targets"):
        parse_targets("orders-db: {}\n")


def test_a_missing_targets_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match=r"--targets-file .*cannot be read"):
        load_targets(str(tmp_path / "absent.yaml"))


def test_the_unrecorded_grace_defaults_to_two_minutes(tmp_path: Path) -> None:
    assert load_targets(str(_write(tmp_path))).postgresql["orders-db"].unrecorded_grace == 120.0


def test_an_unrecorded_grace_no_longer_than_the_timeout_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, timeout=5, unrecorded_grace=5)
    assert "targets.orders-db.unrecorded_grace" in message and "the timeout" in message
