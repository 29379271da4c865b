"""The one check of a CA bundle given as PEM text: the injector's --broker-ca-file and the
sidecar's JITMESH_BROKER_CA / JITMESH_BROKER_CA_FILE are refused by it at start, with the reason."""

from __future__ import annotations

import ssl


def pem_ca_problem(pem: str) -> str | None:
    """None when `pem` holds at least one usable CA certificate, else why it does not."""
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"holds no usable PEM certificate: {getattr(exc, 'reason', None) or exc}"
    return None
