"""Names fixed by the external contract (docs/contract.md): grant and token types, claims,
labels, annotations and environment variables shared by the three components."""

import re
from typing import Final

# RFC 8693 token exchange
GRANT_TYPE_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_POSTGRESQL: Final = "urn:jitmesh:token-type:postgresql"  # a brokered database login (§9)
POSTGRESQL_LOGIN_PREFIX: Final = "jitmesh_login_"  # a login's role name: this and the 32 hex digits of its jti
KIND_JWT: Final = "jwt"
KIND_POSTGRESQL: Final = "postgresql"
ACCESS_TOKEN_JWT_TYP: Final = "at+jwt"  # RFC 9068 section 2.1
SIGNING_ALG: Final = "ES256"

# Claims of issued tokens
KUBERNETES_CLAIM: Final = "kubernetes.io"
DECISION_ID_CLAIM: Final = "decision_id"
DRY_RUN_CLAIM: Final = "jitmesh.io/dry_run"  # issued by --enforcement dry-run although the policy denied
SERVICEACCOUNT_SUB_PREFIX: Final = "system:serviceaccount:"

# Injection (docs/contract.md §4)
LABEL_INJECT: Final = "jitmesh.io/inject"
NAMESPACE_LABEL_INJECTION: Final = "jitmesh.io/injection"
ANNOTATION_STATUS: Final = "jitmesh.io/status"
STATUS_INJECTED: Final = "injected"
ANNOTATION_AUDIENCES: Final = "jitmesh.io/audiences"
ANNOTATION_SCOPES_PREFIX: Final = "jitmesh.io/scopes."
ANNOTATION_KIND_PREFIX: Final = "jitmesh.io/kind."  # jitmesh.io/kind.<audience>: postgresql
ANNOTATION_TTL: Final = "jitmesh.io/ttl"
ANNOTATION_TOKEN_DIR: Final = "jitmesh.io/token-dir"
# The receiving side (docs/contract.md §7): an access proxy in front of the pod's port
ANNOTATION_PROTECT: Final = "jitmesh.io/protect"  # "<port>=<app-port>"
ANNOTATION_SERVES: Final = "jitmesh.io/serves"  # the audiences the workload accepts
# Proof of possession and credential injection (docs/contract.md §8)
ANNOTATION_DPOP: Final = "jitmesh.io/dpop"  # "true": the sidecar asks for DPoP-bound tokens
ANNOTATION_UPSTREAM_PREFIX: Final = "jitmesh.io/upstream."  # jitmesh.io/upstream.<audience>: <URL>
ANNOTATION_UPSTREAM_CA_PREFIX: Final = "jitmesh.io/upstream-ca."  # jitmesh.io/upstream-ca.<audience>: <path>
PROXY_CONTAINER_NAME: Final = "jitmesh-proxy"
DEFAULT_TOKEN_DIR: Final = "/var/run/jitmesh"
SIDECAR_CONTAINER_NAME: Final = "jitmesh-sidecar"
TOKENS_VOLUME: Final = "jitmesh-tokens"
ATTESTATION_VOLUME: Final = "jitmesh-attestation"
DEFAULT_SUBJECT_AUDIENCE: Final = "jitmesh"

# Sidecar environment (docs/contract.md §1)
ENV_BROKER_URL: Final = "JITMESH_BROKER_URL"
ENV_AUDIENCES: Final = "JITMESH_AUDIENCES"
ENV_SCOPES_PREFIX: Final = "JITMESH_SCOPES_"
ENV_KIND_PREFIX: Final = "JITMESH_KIND_"  # JITMESH_KIND_<AUDIENCE>=postgresql
ENV_TTL: Final = "JITMESH_TTL"
ENV_SA_TOKEN_FILE: Final = "JITMESH_SA_TOKEN_FILE"
ENV_TOKEN_DIR: Final = "JITMESH_TOKEN_DIR"
ENV_LISTEN: Final = "JITMESH_LISTEN"
ENV_AGENT_URL: Final = "JITMESH_AGENT_URL"
# Not in the SPEC's list: the broker's CA as PEM text, set by the injector (--broker-ca-file)
# and read by the sidecar, so an https broker signed by a private CA is verified.
ENV_BROKER_CA: Final = "JITMESH_BROKER_CA"
ENV_TOKEN_GROUP: Final = "JITMESH_TOKEN_GROUP"  # the group that may read token files (mode 0640)
# What an app container gets per upstream: JITMESH_UPSTREAM_<AUDIENCE>=http://127.0.0.1:<port>
ENV_UPSTREAM_PREFIX: Final = "JITMESH_UPSTREAM_"
# The sidecar's side of the same: the upstream's URL, the loopback address to listen on, the CA file
ENV_DPOP: Final = "JITMESH_DPOP"
ENV_UPSTREAM_URL_PREFIX: Final = "JITMESH_UPSTREAM_URL_"
ENV_UPSTREAM_LISTEN_PREFIX: Final = "JITMESH_UPSTREAM_LISTEN_"
ENV_UPSTREAM_CA_PREFIX: Final = "JITMESH_UPSTREAM_CA_"


def scopes_env_name(audience: str) -> str:
    """`JITMESH_SCOPES_<AUDIENCE>`: audience upper-cased with `-` and `.` as `_`."""
    return ENV_SCOPES_PREFIX + audience.upper().replace("-", "_").replace(".", "_")


def kind_env_name(audience: str) -> str:
    """`JITMESH_KIND_<AUDIENCE>`, spelled like the scopes variable."""
    return ENV_KIND_PREFIX + audience.upper().replace("-", "_").replace(".", "_")


def audience_env_suffix(audience: str) -> str:
    """An audience as the tail of an environment variable name: upper case, every character
    other than an ASCII letter or digit as `_` (`orders-api.v2` -> `ORDERS_API_V2`)."""
    return re.sub(r"[^A-Z0-9]", "_", audience.upper())


def upstream_env_name(audience: str) -> str:
    """`JITMESH_UPSTREAM_<AUDIENCE>`: where an app container reaches the audience's upstream."""
    return ENV_UPSTREAM_PREFIX + audience_env_suffix(audience)


def serviceaccount_subject(namespace: str, service_account: str) -> str:
    return f"{SERVICEACCOUNT_SUB_PREFIX}{namespace}:{service_account}"


# RFC 6749 section 3.3 scope-token: printable ASCII but space, `"` and `\`.
SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# How long a human's reason (a revocation, an approval or a refusal) may be.
MAX_REASON_CHARS: Final = 1024


# Every event an audit record can carry (the audit API's `event` filter): the decisions, then
# what admins did.
AUDIT_EVENTS: Final = ("issued", "denied", "error", "pending", "dry_run_allowed",
                       "revoked", "lifted", "access_approved", "access_denied", "admin")


def check_audit_event(event: str, name: str = "event") -> None:
    """ValueError naming the known events when `event` is none of them."""
    if event not in AUDIT_EVENTS:
        raise ValueError(f"{name} {event!r:.60} is not an audit event; known: {', '.join(AUDIT_EVENTS)}")
