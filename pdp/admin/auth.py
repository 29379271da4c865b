"""Who is an admin, and who exactly (docs/contract.md §2, "Admin and operations").

An admin call carries `Authorization: Bearer <token>`. The token is an admin when it is
listed in `--admin-token-file` (`pdp.admin.AdminTokens`), or, when the broker has a
Kubernetes client, when the API server's TokenReview authenticates it and a
SubjectAccessReview allows that identity:

    verb `admin` on resource `brokers` in API group `jitmesh.io`

i.e. an RBAC rule `{apiGroups: [jitmesh.io], resources: [brokers], verbs: [admin]}` bound
to the user, group or ServiceAccount (charts/jitmesh/values.yaml shows one). The answer of
the API server is cached for a few seconds per token (allowed and denied alike).

Every admin is named for the audit trail: `admin-token:<first 12 hex of its SHA-256>`
(the token itself is never logged), or the Kubernetes user name.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jitmesh.log import get_logger
from pdp.admin.tokens import AdminTokens, bearer_token

log = get_logger("pdp.admin")

ADMIN_GROUP = "jitmesh.io"
ADMIN_RESOURCE = "brokers"
ADMIN_VERB = "admin"
REVIEW_CACHE_SECONDS = 10.0
REVIEW_CACHE_MAX = 4096


@dataclass(frozen=True)
class Admin:
    """An authenticated admin: `who` goes into every audit record of its calls."""

    who: str
    via: str  # "admin-token-file" | "subjectaccessreview"


class AdminReviewUnavailable(Exception):
    """The API server could not be asked; the call is refused (503), never let through."""


class AdminReviewer(Protocol):
    async def review(self, token: str) -> str | None:
        """The Kubernetes user name if the token's identity may act as admin, else None."""


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def sar_spec(user: str, groups: list[str], uid: str | None, extra: dict[str, list[str]] | None) -> dict[str, Any]:
    """The SubjectAccessReview spec asking whether this identity may act as a broker admin."""
    spec: dict[str, Any] = {
        "user": user, "groups": groups,
        "resourceAttributes": {"group": ADMIN_GROUP, "resource": ADMIN_RESOURCE, "verb": ADMIN_VERB},
    }
    if uid:
        spec["uid"] = uid
    if extra:
        spec["extra"] = extra
    return spec


class KubeAdminReviewer:
    """TokenReview, then SubjectAccessReview, through the kubernetes client (in a thread)."""

    def __init__(self, api_client: Any, clock: Callable[[], float] = time.monotonic,
                 cache_seconds: float = REVIEW_CACHE_SECONDS) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._client = client
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}

    def _review_blocking(self, token: str) -> str | None:
        c = self._client
        review = self._auth.create_token_review(c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token)))
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        user = status.user
        spec = sar_spec(str(user.username), list(user.groups or []), user.uid, user.extra)
        sar = self._authz.create_subject_access_review(c.V1SubjectAccessReview(spec=c.V1SubjectAccessReviewSpec(
            user=spec["user"], groups=spec["groups"], uid=spec.get("uid"), extra=spec.get("extra"),
            resource_attributes=c.V1ResourceAttributes(**spec["resourceAttributes"]))))
        allowed = bool(sar.status and sar.status.allowed)
        return str(user.username) if allowed else None

    async def review(self, token: str) -> str | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            who = await asyncio.to_thread(self._review_blocking, token)
        except Exception as exc:
            raise AdminReviewUnavailable(f"the API server could not review the admin token: "
                                         f"{type(exc).__name__}") from None
        if len(self._cache) >= REVIEW_CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= REVIEW_CACHE_MAX:
                self._cache.clear()
        self._cache[key] = (now + self._cache_seconds, who)
        return who


async def authenticate_admin(authorization: str | None, tokens: AdminTokens,
                             reviewer: AdminReviewer | None) -> Admin | None:
    """The admin presenting this Authorization header, or None. Raises AdminReviewUnavailable
    when only the API server could tell and it cannot be asked."""
    token = bearer_token(authorization)
    if token is None:
        return None
    if tokens.is_admin(authorization):
        return Admin(who=f"admin-token:{token_fingerprint(token)}", via="admin-token-file")
    if reviewer is None:
        return None
    who = await reviewer.review(token)
    if who is None:
        return None
    return Admin(who=who, via="subjectaccessreview")
