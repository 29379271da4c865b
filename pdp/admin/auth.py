"""Who is an admin or a reader, and who exactly (docs/contract.md §2, "Admin and operations").

An admin call carries `Authorization: Bearer <token>`. The token is an admin when it is
listed in `--admin-token-file`, a reader when it is listed in `--reader-token-file`
(`pdp.admin.tokens.TokenFile`), or, when the broker has a Kubernetes client, when the API
server's TokenReview authenticates it for the broker's audience and a SubjectAccessReview
allows that identity on resource `brokers` in API group `jitmesh.io`:

    verb `admin`: an admin; else verb `get`: a reader

i.e. an RBAC rule `{apiGroups: [jitmesh.io], resources: [brokers], verbs: [admin]}` (or
`[get]`) bound to the user, group or ServiceAccount (charts/jitmesh/values.yaml shows one).
A reader may introspect and follow the revocation events; only an admin changes anything.

Strangers must not make the broker work without bound: the API server's answer is cached
for a few seconds per token digest (allowed and denied alike, bounded), concurrent asks
for one token share one call, calls that miss the cache are limited per client address
(a token bucket; 429 with Retry-After), and every call runs on the bounded API-server pool
with a timeout (`pdp.attestation.kube.ApiServerCalls`, passed in as `calls`).

Every admin is named for the audit trail: `admin-token:<first 12 hex of its SHA-256>`
(`reader-token:` for readers; the token itself is never logged), or the Kubernetes user name.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from jitmesh.log import get_logger
from pdp.admin.tokens import TokenFile, bearer_token

log = get_logger("pdp.admin")

T = TypeVar("T")
Role = Literal["admin", "reader"]

ADMIN_GROUP = "jitmesh.io"
ADMIN_RESOURCE = "brokers"
ADMIN_VERB = "admin"
READER_VERB = "get"
REVIEW_CACHE_SECONDS = 10.0
REVIEW_CACHE_MAX = 4096
REVIEW_TIMEOUT = (2.0, 3.0)  # seconds to connect and to read each API-server answer
REVIEW_RATE = 5.0  # API-server reviews per second per client address, after the burst
REVIEW_BURST = 20
LIMITER_MAX_ADDRESSES = 10_000
OVERFLOW_ADDRESS = "*"  # addresses beyond the table share one bucket: the table stays bounded, the limit holds


@dataclass(frozen=True)
class Admin:
    """An authenticated admin or reader: `who` goes into every audit record of its calls."""

    who: str
    via: str  # "admin-token-file" | "reader-token-file" | "subjectaccessreview"
    role: Role = "admin"


@dataclass(frozen=True)
class Review:
    """What the API server said about a token: the identity and its role."""

    who: str
    role: Role


class AdminReviewUnavailable(Exception):
    """The API server could not be asked; the call is refused (503), never let through."""


class AdminReviewRateLimited(Exception):
    """This client address asked for too many reviews: 429, try again after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many unrecognised bearer tokens from this address; retry after {retry_after}s")
        self.retry_after = retry_after


class AdminReviewer(Protocol):
    async def review(self, token: str, client: str | None = None) -> Review | None:
        """The identity and role of the token if it may act as admin or reader, else None."""


class BlockingCalls(Protocol):
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call off the event loop, bounded; raises when too many wait."""


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class AddressLimiter:
    """A token bucket per client address: `burst` at once, then `rate` per second. At most
    `max_entries` addresses are remembered; the rest share one bucket."""

    def __init__(self, rate: float = REVIEW_RATE, burst: int = REVIEW_BURST,
                 max_entries: int = LIMITER_MAX_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_entries, self.clock = rate, float(burst), max_entries, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def _level(self, address: str, now: float) -> float:
        tokens, when = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def take(self, address: str | None) -> float:
        """0 when this address may make one more call now (and it is counted), else the
        seconds until it may."""
        now = self.clock()
        key = address or OVERFLOW_ADDRESS
        if key not in self._buckets and len(self._buckets) >= self.max_entries:
            self._buckets = {a: b for a, b in self._buckets.items() if self._level(a, now) < self.burst}
            if len(self._buckets) >= self.max_entries:
                key = OVERFLOW_ADDRESS
        level = self._level(key, now)
        if level < 1.0:
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate if self.rate > 0 else math.inf
        self._buckets[key] = (level - 1.0, now)
        return 0.0


def sar_spec(user: str, groups: list[str], uid: str | None, extra: dict[str, list[str]] | None,
             verb: str = ADMIN_VERB) -> dict[str, Any]:
    """The SubjectAccessReview spec asking whether this identity may `verb` the broker."""
    spec: dict[str, Any] = {
        "user": user, "groups": groups,
        "resourceAttributes": {"group": ADMIN_GROUP, "resource": ADMIN_RESOURCE, "verb": verb},
    }
    if uid:
        spec["uid"] = uid
    if extra:
        spec["extra"] = extra
    return spec


class KubeAdminReviewer:
    """TokenReview (for `audience`), then SubjectAccessReview, through the kubernetes
    client on the bounded API-server pool `calls`."""

    def __init__(self, api_client: Any, calls: BlockingCalls, audience: str | None = None,
                 limiter: AddressLimiter | None = None, clock: Callable[[], float] = time.monotonic,
                 cache_seconds: float = REVIEW_CACHE_SECONDS, cache_max: int = REVIEW_CACHE_MAX) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._client = client
        self.calls = calls
        self.audience = audience
        self.limiter = limiter
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache_max = cache_max
        self._cache: dict[str, tuple[float, Review | None]] = {}
        self._asking: dict[str, asyncio.Future[Review | None]] = {}

    def _allowed(self, user: Any, verb: str) -> bool:
        c = self._client
        spec = sar_spec(str(user.username), list(user.groups or []), user.uid, user.extra, verb)
        sar = self._authz.create_subject_access_review(c.V1SubjectAccessReview(spec=c.V1SubjectAccessReviewSpec(
            user=spec["user"], groups=spec["groups"], uid=spec.get("uid"), extra=spec.get("extra"),
            resource_attributes=c.V1ResourceAttributes(**spec["resourceAttributes"]))),
            _request_timeout=REVIEW_TIMEOUT)
        return bool(sar.status and sar.status.allowed)

    def _review_blocking(self, token: str) -> Review | None:
        c = self._client
        spec = c.V1TokenReviewSpec(token=token, audiences=[self.audience] if self.audience else None)
        review = self._auth.create_token_review(c.V1TokenReview(spec=spec), _request_timeout=REVIEW_TIMEOUT)
        status = review.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            # the API server's reason stays in the log: the client only hears "not an admin"
            log.info("admin.tokenreview_refused", error=str(getattr(status, "error", None) or "")[:300])
            return None
        if self.audience and self.audience not in (status.audiences or []):
            log.info("admin.tokenreview_audience", audiences=status.audiences, expected=self.audience)
            return None
        user = status.user
        if self._allowed(user, ADMIN_VERB):
            return Review(str(user.username), "admin")
        if self._allowed(user, READER_VERB):
            return Review(str(user.username), "reader")
        return None

    async def _ask(self, token: str) -> Review | None:
        try:
            return await self.calls.run(self._review_blocking, token)
        except Exception as exc:
            raise AdminReviewUnavailable(f"the API server could not review the bearer token: "
                                         f"{type(exc).__name__}") from None

    def _remember(self, key: str, answer: Review | None) -> None:
        now = self._clock()
        if len(self._cache) >= self._cache_max:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= self._cache_max:  # all fresh: the oldest go first
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (now + self._cache_seconds, answer)

    async def review(self, token: str, client: str | None = None) -> Review | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        asking = self._asking.get(key)
        if asking is None:
            if self.limiter is not None:
                wait = self.limiter.take(client)
                if wait > 0:
                    raise AdminReviewRateLimited(max(1, math.ceil(min(wait, 3600.0))))
            asking = asyncio.ensure_future(self._ask(token))
            self._asking[key] = asking

            def settle(done: asyncio.Future[Review | None]) -> None:
                self._asking.pop(key, None)
                if not done.cancelled() and done.exception() is None:
                    self._remember(key, done.result())

            asking.add_done_callback(settle)
        return await asyncio.shield(asking)


async def authenticate_admin(authorization: str | None, tokens: TokenFile, reviewer: AdminReviewer | None,
                             readers: TokenFile | None = None, client: str | None = None) -> Admin | None:
    """The admin or reader presenting this Authorization header, or None. Raises
    AdminReviewUnavailable when only the API server could tell and it cannot be asked,
    AdminReviewRateLimited when this client asked too often."""
    token = bearer_token(authorization)
    if token is None:
        return None
    if tokens.lists(authorization):
        return Admin(who=f"admin-token:{token_fingerprint(token)}", via="admin-token-file")
    if readers is not None and readers.lists(authorization):
        return Admin(who=f"reader-token:{token_fingerprint(token)}", via="reader-token-file", role="reader")
    if reviewer is None:
        return None
    answer = await reviewer.review(token, client)
    if answer is None:
        return None
    return Admin(who=answer.who, via="subjectaccessreview", role=answer.role)
