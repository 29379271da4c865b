"""Attestation through the API server: TokenReview, and the pod a token is bound to read
with the Kubernetes client (`--attestation tokenreview`, `--pod-lookup`).

Every call to the API server runs on `ApiServerCalls`: a few threads of its own (never the
default pool that also reads the SQLite store), a bounded queue that refuses at once when
full, and a timeout on each request, so a slow or flooded API server cannot stall `/token`
(docs/contract.md §2, "Admin and operations")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jwt

from jitmesh.contract import SERVICEACCOUNT_SUB_PREFIX
from jitmesh.log import get_logger
from pdp.attestation.identity import (
    AttestationError,
    AttestationUnavailable,
    PodInfo,
    PodReader,
    Subject,
    check_subject_age,
)
from pdp.attestation.verify import POD_NAME_EXTRA, POD_UID_EXTRA, bind_pod

log = get_logger("pdp.attestation")

T = TypeVar("T")

API_TIMEOUT = (2.0, 3.0)  # seconds to connect and to read one API-server answer
API_WORKERS = 4
API_MAX_PENDING = 64  # calls running or waiting; beyond that a call is refused at once
REFUSAL_CACHE_SECONDS = 10.0
REFUSAL_CACHE_MAX = 4096


# what the API server said about a refused token, for this request's audit record only
REFUSAL_DETAIL: contextvars.ContextVar[str | None] = contextvars.ContextVar("tokenreview_refusal", default=None)


class ApiServerBusy(Exception):
    """Too many API-server calls are already waiting: refuse now (503) rather than queue."""


class ApiServerCalls:
    """A small dedicated thread pool for blocking Kubernetes client calls, with a bound on
    the calls running or waiting. Each call must carry its own `_request_timeout`."""

    def __init__(self, workers: int = API_WORKERS, max_pending: int = API_MAX_PENDING) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apiserver")
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def _done(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pending >= self.max_pending:
                raise ApiServerBusy(f"{self._pending} API-server calls are already waiting")
            self._pending += 1
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)  # counts the thread's work, not the waiter's patience
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def load_kube_api_client(kubeconfig: Path | None) -> Any:
    """A kubernetes ApiClient from a kubeconfig, or the in-cluster configuration."""
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


def _api_unavailable(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    return not isinstance(exc, ApiException) or exc.status is None or exc.status >= 500 or exc.status == 429


class KubePodReader:
    """Reads pods through the API server; answers are cached for `ttl` seconds."""

    def __init__(self, api_client: Any, ttl: float = 5.0, calls: ApiServerCalls | None = None) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self.ttl = ttl
        self.calls = calls or ApiServerCalls()
        self._cache: dict[tuple[str, str], tuple[float, PodInfo | None]] = {}

    def _read(self, namespace: str, name: str) -> PodInfo | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod: Any = self._core.read_namespaced_pod(name, namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = pod.spec
        images = [c.image for c in (spec.init_containers or []) + (spec.containers or []) if c.image]
        return PodInfo(name=pod.metadata.name, uid=pod.metadata.uid,
                       labels=dict(pod.metadata.labels or {}), images=tuple(images))

    async def read_pod(self, namespace: str, name: str) -> PodInfo | None:
        key = (namespace, name)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            info = await self.calls.run(self._read, namespace, name)
        except Exception as exc:
            if _api_unavailable(exc):
                raise AttestationUnavailable(f"cannot read pod {namespace}/{name}: {type(exc).__name__}") from None
            log.warning("pod_lookup.refused", namespace=namespace, pod=name, error=str(exc)[:500])
            raise AttestationError(f"cannot read pod {namespace}/{name}: the API server answered "
                                   f"{getattr(exc, 'status', None)}") from None
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now, info)
        return info


class TokenReviewRefused(AttestationError):
    """TokenReview did not authenticate the token. The API server's own words stay in
    `detail` (for the log and the audit), never in the answer to the client."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        if detail:
            REFUSAL_DETAIL.set(detail)


def subject_from_token_review(status: Any, token: str, audience: str) -> Subject:
    """The identity of an authenticated TokenReview status (user, extra, audiences)."""
    if not getattr(status, "authenticated", False):
        raise TokenReviewRefused("TokenReview did not authenticate the subject token",
                                 str(getattr(status, "error", None) or "not authenticated"))
    audiences = getattr(status, "audiences", None) or []
    if audience not in audiences:
        raise AttestationError(f"TokenReview audiences {audiences} do not include {audience!r}")
    user = status.user
    username = getattr(user, "username", None) or ""
    if not username.startswith(SERVICEACCOUNT_SUB_PREFIX) or username.count(":") != 3:
        raise AttestationError(f"subject {username!r:.100} is not a ServiceAccount")
    namespace, sa_name = username[len(SERVICEACCOUNT_SUB_PREFIX):].split(":")
    extra = getattr(user, "extra", None) or {}
    pod_names, pod_uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    pod = PodInfo(name=pod_names[0], uid=pod_uids[0]) if pod_names and pod_uids else None
    try:  # the API server verified the token; its claims are read for iss and iat only
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}
    iat = claims.get("iat")
    return Subject(sub=username, issuer=str(claims.get("iss", "")), namespace=namespace, service_account=sa_name,
                   pod=pod, issued_at=float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool)
                   else None)


class RefusalCache:
    """Recent refusals by the SHA-256 of the token: a token refused a moment ago is refused
    again without asking the API server. Bounded; the token itself is never kept."""

    def __init__(self, seconds: float = REFUSAL_CACHE_SECONDS, max_entries: int = REFUSAL_CACHE_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.max_entries, self.clock = seconds, max_entries, clock
        self._entries: dict[str, tuple[float, AttestationError]] = {}

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> AttestationError | None:
        hit = self._entries.get(self.key(token))
        if hit is None or hit[0] <= self.clock():
            return None
        return hit[1]

    def put(self, token: str, refusal: AttestationError) -> None:
        now = self.clock()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            while len(self._entries) >= self.max_entries:  # all fresh: the oldest go first
                del self._entries[next(iter(self._entries))]
        self._entries[self.key(token)] = (now + self.seconds, refusal)


class TokenReviewAttestor:
    """Asks the API server (TokenReview, with the broker's subject audience)."""

    def __init__(self, api_client: Any, audience: str, pods: PodReader | None = None,
                 calls: ApiServerCalls | None = None, max_age: float | None = None) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self.audience = audience
        self.max_age = max_age  # --max-subject-token-age
        self.pods = pods
        self._own_calls = calls is None
        self.calls = calls or ApiServerCalls()
        self.refusals = RefusalCache()

    def _review(self, token: str) -> Any:
        from kubernetes import client

        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        return self._auth.create_token_review(body, _request_timeout=API_TIMEOUT).status

    async def attest(self, token: str) -> Subject:
        refused = self.refusals.get(token)
        if refused is not None:
            if isinstance(refused, TokenReviewRefused) and refused.detail:
                REFUSAL_DETAIL.set(refused.detail)
            raise refused.with_traceback(None)  # one cached instance: do not let its traceback grow
        try:
            status = await self.calls.run(self._review, token)
        except Exception as exc:
            if _api_unavailable(exc):
                raise AttestationUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
            log.warning("tokenreview.refused", status=getattr(exc, "status", None), error=str(exc)[:500])
            raise TokenReviewRefused("the API server refused the TokenReview", str(exc)[:500]) from None
        try:
            subject = subject_from_token_review(status, token, self.audience)
        except AttestationError as refusal:
            self.refusals.put(token, refusal)
            raise
        check_subject_age(subject, self.max_age, time.time())
        return await bind_pod(subject, self.pods)

    async def close(self) -> None:
        if self._own_calls:
            self.calls.close()
