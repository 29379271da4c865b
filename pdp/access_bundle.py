"""`GET /v1/access-policy/bundle?entrypoint=jitmesh/access/decision`: the proxies' access
policy built by the pinned OPA as Wasm (`opa build -t wasm -e <entrypoint>` on
`--access-policy-dir`, tests left out), served as OPA's bundle (a gzipped tar with
`/policy.wasm` and `/data.json`) with a strong ETag so a proxy re-fetches only what changed
(docs/contract.md §7).

Built on first request. While the broker runs, `AccessBundles.watch` looks at the directory
every `CHECK_SECONDS` (names, sizes and modification times of the policy files) and rebuilds
each entrypoint once something changed; a new module is announced on the verifiers' event
stream (`event: policy`) so proxies fetch it at once instead of at their next poll. A build
that fails keeps the module in force, is logged as an error and audited
(`access_policy_build_failed`), and is not retried until the files change again.

A policy that needs a builtin the Wasm target lacks is refused when built, loudly: logged as
an error and answered 503 naming the builtins, with OPA's REST API (`jitmesh proxy --opa-url`)
as the way to run it. Callers authenticate like event-stream subscribers: an admin, or a
workload's ServiceAccount token.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from jitmesh.log import get_logger
from jitmesh.opa_server import OPANotFound, find_opa
from jitmesh.opa_wasm import Fingerprint, OPABuildFailed, WasmPolicyError, build_wasm_bundle
from jitmesh.opa_wasm import policy_fingerprint as fingerprint
from pdp.attestation.identity import AttestationError, AttestationUnavailable
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.http.services import broker_of
from pdp.store.base import AuditRecord

log = get_logger("pdp.access_bundle")

DEFAULT_ENTRYPOINT = "jitmesh/access/decision"
BUILD_TIMEOUT = 60.0
CHECK_SECONDS = 1.0
BUILD_FAILED = "access_policy_build_failed"

class BuildFailed(Exception):
    pass


@dataclass(frozen=True)
class Built:
    bundle: bytes
    etag: str
    fingerprint: Fingerprint


def build(opa_bin: str, policy_dir: Path, entrypoint: str) -> bytes:
    """OPA's Wasm bundle of `entrypoint`; BuildFailed naming the problem."""
    try:
        return build_wasm_bundle(opa_bin, policy_dir, entrypoint, BUILD_TIMEOUT)
    except OPABuildFailed as exc:
        raise BuildFailed(str(exc)) from None
    except WasmPolicyError as exc:
        raise BuildFailed(f"{exc}; evaluate this policy through OPA's REST API instead (jitmesh proxy --opa-url)") \
            from None


Announce = Callable[[str, str], None]
AuditFailure = Callable[[AuditRecord], Awaitable[object]]


class AccessBundles:
    """The built bundle of each entrypoint asked for, rebuilt when the directory changes."""

    def __init__(self, policy_dir: Path, opa_bin: str, announce: Announce | None = None,
                 audit: AuditFailure | None = None, clock: Callable[[], float] = time.time) -> None:
        self.policy_dir = policy_dir
        self.opa_bin = opa_bin
        self.announce = announce
        self.audit = audit
        self.clock = clock
        self._built: dict[str, Built] = {}
        self._failed: dict[str, tuple[Fingerprint, str]] = {}  # the files a build failed on, and why
        self._lock = asyncio.Lock()

    async def get(self, entrypoint: str) -> Built:
        """The bundle in force for `entrypoint`, built first if the files changed since;
        BuildFailed only while none was ever built."""
        async with self._lock:
            return await self._refresh(entrypoint, fingerprint(self.policy_dir))

    async def check(self) -> None:
        """Rebuild every entrypoint built so far whose files changed."""
        async with self._lock:
            current = fingerprint(self.policy_dir)
            for entrypoint in list(self._built):
                try:
                    await self._refresh(entrypoint, current)
                except BuildFailed:
                    pass  # logged and audited by _refresh

    async def watch(self, every: float = CHECK_SECONDS) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.check()
            except Exception:  # one bad look must not end the watch
                log.error("access_policy.check_failed", policy_dir=str(self.policy_dir), exc_info=True)

    async def _refresh(self, entrypoint: str, current: Fingerprint) -> Built:
        cached = self._built.get(entrypoint)
        if cached is not None and cached.fingerprint == current:
            return cached
        failed = self._failed.get(entrypoint)
        if failed is not None and failed[0] == current:  # already tried on these very files
            if cached is not None:
                return cached
            raise BuildFailed(failed[1])
        try:
            bundle = await asyncio.to_thread(build, self.opa_bin, self.policy_dir, entrypoint)
        except BuildFailed as exc:
            self._failed[entrypoint] = (current, str(exc))
            await self._report_failure(entrypoint, str(exc), kept=cached)
            if cached is not None:
                return cached
            raise
        self._failed.pop(entrypoint, None)
        built = Built(bundle, '"' + hashlib.sha256(bundle).hexdigest()[:32] + '"', current)
        self._built[entrypoint] = built
        log.info("access_policy.built", entrypoint=entrypoint, etag=built.etag, bytes=len(bundle),
                 replaced=None if cached is None else cached.etag)
        if cached is not None and cached.etag != built.etag and self.announce is not None:
            self.announce(entrypoint, built.etag)
        return built

    async def _report_failure(self, entrypoint: str, error: str, kept: Built | None) -> None:
        log.error("access_policy.build_failed", entrypoint=entrypoint, policy_dir=str(self.policy_dir), error=error,
                  kept_etag=None if kept is None else kept.etag)
        if self.audit is None:
            return
        record = AuditRecord(decision_id=str(uuid.uuid4()), time=self.clock(), event="error", policy_path=entrypoint,
                             details={"error": BUILD_FAILED, "error_description": error[:2000],
                                      "policy_dir": str(self.policy_dir),
                                      "kept_etag": None if kept is None else kept.etag})
        try:
            await self.audit(record)
        except Exception as exc:  # the log line above stands; the store being down changes nothing here
            log.warning("access_policy.audit_failed", error=f"{type(exc).__name__}: {exc}"[:300])


def bundles_for(policy_dir: Path, opa_bin: str | None, announce: Announce | None,
                audit: AuditFailure | None) -> AccessBundles | None:
    """The started broker's bundles, or None when no OPA binary can be found (the endpoint
    then answers 503 naming the problem)."""
    try:
        found = find_opa(opa_bin)
    except OPANotFound as exc:
        log.error("access_policy.no_opa", policy_dir=str(policy_dir), error=str(exc))
        return None
    return AccessBundles(policy_dir, found, announce=announce, audit=audit)


async def _authenticate(request: Request) -> None:
    broker = broker_of(request)
    authorization = request.headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OAuthError(401, "invalid_token", "a bearer token is required: the proxy's ServiceAccount token")
    if broker.admin.is_admin(authorization):
        return
    try:
        await broker.attestor.attest(token.strip())
    except AttestationUnavailable as exc:
        raise unavailable(f"the ServiceAccount token cannot be verified right now: {exc}") from None
    except AttestationError as exc:
        raise OAuthError(401, "invalid_token", f"not an acceptable ServiceAccount token: {exc}") from None


async def access_bundle_endpoint(request: Request) -> Response:
    config = broker_of(request).config
    await _authenticate(request)
    if config.access_policy_dir is None:
        return Response(b'{"error":"not_found","error_description":"this broker serves no access policy: start it '
                        b'with --access-policy-dir"}', status_code=404, media_type="application/json")
    entrypoint = request.query_params.get("entrypoint", DEFAULT_ENTRYPOINT).strip("/")
    if not entrypoint or any(not part.replace("_", "").isalnum() for part in entrypoint.split("/")):
        raise invalid_request(f"entrypoint {entrypoint!r:.80}: expected a Rego path like {DEFAULT_ENTRYPOINT}")
    bundles = getattr(request.app.state, "access_bundles", None)
    if bundles is None:
        try:
            opa_bin = find_opa(config.opa_bin)
        except OPANotFound as exc:
            raise unavailable(f"the access policy cannot be built: {exc}") from None
        bundles = request.app.state.access_bundles = AccessBundles(config.access_policy_dir, opa_bin)
    try:
        built = await bundles.get(entrypoint)
    except BuildFailed as exc:
        raise unavailable(f"the access policy cannot be built for in-process evaluation: {exc}") from None
    headers = {"ETag": built.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == built.etag:
        return Response(status_code=304, headers=headers)
    return Response(built.bundle, media_type="application/gzip", headers=headers)
