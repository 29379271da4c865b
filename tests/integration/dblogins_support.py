"""A PostgreSQL target for the database-login tests: a fresh database with a readable table,
a table no scope grants, the scope roles and the owner, and a targets file naming it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

from tests.fixtures.postgres import PostgresServer

PREFIX = "jitmesh_login_"
SHIPPED = Path(__file__).resolve().parents[2] / "policies"


@dataclass
class Target:
    server: PostgresServer
    admin_url: str
    dbname: str
    read_role: str
    write_role: str
    owner: str
    targets_file: Path

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def logins(self) -> list[str]:
        with self.admin() as conn:
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s) "
                                "AND shobj_description(oid, 'pg_authid') LIKE %s",
                                (PREFIX, '%"aud":"orders-db"%')).fetchall()
        return [str(r[0]) for r in rows]

    def role_exists(self, name: str) -> bool:
        with self.admin() as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None

    def wait_gone(self, name: str, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.role_exists(name):
                return True
            time.sleep(0.02)
        return not self.role_exists(name)


def make_target(server: PostgresServer, root: Path, admin_pool: int = 4, timeout: float = 3.0,
                connection_limit: int = 2, unrecorded_grace: float | None = None) -> Target:
    """A fresh database on `server` (role names unique to it, as roles are cluster-wide)."""
    url = server.create_database("dbl")
    dbname = url.rsplit("/", 1)[1]
    tag = uuid.uuid4().hex[:8]
    read, write, owner = f"orders_read_{tag}", f"orders_write_{tag}", f"orders_owner_{tag}"
    with psycopg.connect(url, autocommit=True) as conn:
        for role in (read, write, owner):
            conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        conn.execute("CREATE TABLE orders (id int primary key, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'tea')")
        conn.execute("CREATE TABLE payroll (id int primary key, salary int)")
        conn.execute(f'GRANT SELECT ON orders TO "{read}"')
        conn.execute(f'GRANT SELECT, INSERT ON orders TO "{write}"')
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{write}"')
        # the test servers trust every local user; this database's logins must prove their password
        hba = server.datadir / "pg_hba.conf"
        hba.write_text(f"host {dbname} postgres 127.0.0.1/32 trust\n"
                       f"host {dbname} all 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    root.mkdir(parents=True, exist_ok=True)
    (root / "admin.dsn").write_text(url + "\n")
    doc = {"targets": {"orders-db": {
        "kind": "postgresql", "admin_dsn_file": "admin.dsn", "tls": {"mode": "disable"},
        "scopes": {"read": [read], "write": [read, write]}, "connection_limit": connection_limit,
        "admin_pool": admin_pool, "owner": owner, "timeout": timeout}}}
    if unrecorded_grace is not None:
        doc["targets"]["orders-db"]["unrecorded_grace"] = unrecorded_grace
    path = root / "targets.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Target(server=server, admin_url=url, dbname=dbname, read_role=read, write_role=write, owner=owner,
                  targets_file=path)
