"""The two pod volumes the injection adds: the token directory and the attestation token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from injector.config import InjectorConfig
from jitmesh.contract import ATTESTATION_VOLUME, TOKENS_VOLUME

ATTESTATION_MOUNT_PATH = "/var/run/secrets/jitmesh.io/attestation"
ATTESTATION_TOKEN_PATH = "token"
ATTESTATION_EXPIRATION_SECONDS = 600
TOKENS_SIZE_LIMIT = "1Mi"  # a handful of JWTs
TOKEN_FILE_GID = 65532  # the sidecar's group ("nonroot" in distroless images)


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


def token_file_group(spec: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The group the sidecar gives token files (mode 0640), and the patch that puts the app
    containers in it. The pod's fsGroup when it has one (every container is in it already);
    else the sidecar's own group, added to the pod's supplementalGroups so the app can read
    the files and no other user in the pod can."""
    context = spec.get("securityContext") or {}
    fs_group = context.get("fsGroup")
    if isinstance(fs_group, int) and not isinstance(fs_group, bool):
        return fs_group, []
    groups = context.get("supplementalGroups")
    if isinstance(groups, list) and TOKEN_FILE_GID in groups:
        return TOKEN_FILE_GID, []
    if not context:
        return TOKEN_FILE_GID, [{"op": "add", "path": "/spec/securityContext",
                                 "value": {"supplementalGroups": [TOKEN_FILE_GID]}}]
    if not groups:
        return TOKEN_FILE_GID, [{"op": "add", "path": "/spec/securityContext/supplementalGroups",
                                 "value": [TOKEN_FILE_GID]}]
    return TOKEN_FILE_GID, [{"op": "add", "path": "/spec/securityContext/supplementalGroups/-",
                             "value": TOKEN_FILE_GID}]


def attestation_token_file() -> str:
    return f"{ATTESTATION_MOUNT_PATH}/{ATTESTATION_TOKEN_PATH}"
