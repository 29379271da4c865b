"""The two pod volumes the injection adds: the token directory and the attestation token."""

from __future__ import annotations

from typing import Any

from injector.config import InjectorConfig
from jitmesh.contract import ATTESTATION_VOLUME, TOKENS_VOLUME

ATTESTATION_MOUNT_PATH = "/var/run/secrets/jitmesh.io/attestation"
ATTESTATION_TOKEN_PATH = "token"
ATTESTATION_EXPIRATION_SECONDS = 600
TOKENS_SIZE_LIMIT = "1Mi"  # a handful of JWTs


def tokens_volume() -> dict[str, Any]:
    """Memory-backed, so tokens never touch the node's disk."""
    return {"name": TOKENS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": TOKENS_SIZE_LIMIT}}


def attestation_volume(config: InjectorConfig) -> dict[str, Any]:
    """A projected ServiceAccount token for the broker's audience only, never the API server's."""
    return {
        "name": ATTESTATION_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": config.subject_audience,
                    "expirationSeconds": ATTESTATION_EXPIRATION_SECONDS,
                    "path": ATTESTATION_TOKEN_PATH,
                },
            }],
        },
    }


def attestation_token_file() -> str:
    return f"{ATTESTATION_MOUNT_PATH}/{ATTESTATION_TOKEN_PATH}"
