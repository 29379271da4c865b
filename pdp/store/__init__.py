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
    open_store_from_url,
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
