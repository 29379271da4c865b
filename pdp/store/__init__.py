"""The broker's durable state: the interface (`base`), its SQLite and PostgreSQL drivers,
and `open_store_from_url`, the one place that picks a driver for a `--store` URL."""

from pdp.store.base import (
    REVOCATION_KINDS,
    AccessRequest,
    AuditRecord,
    Revocation,
    RevocationEvent,
    RevocationKind,
    SigningKey,
    Store,
    StoreError,
)

__all__ = [
    "REVOCATION_KINDS",
    "AccessRequest",
    "AuditRecord",
    "Revocation",
    "RevocationEvent",
    "RevocationKind",
    "SigningKey",
    "Store",
    "StoreError",
    "open_store_from_url",
]


def open_store_from_url(url: str) -> Store:
    """`sqlite:///path/to/db` or `postgresql://...` -> a Store (not yet opened)."""
    if url.startswith("sqlite:///"):
        from pdp.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from pdp.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"--store {url!r}: expected sqlite:///PATH or postgresql://...")
