"""`GET /v1/access-policy/bundle?entrypoint=jitmesh/access/decision`: the proxies' access
policy built by the pinned OPA as Wasm (`opa build -t wasm -e <entrypoint>` on
`--access-policy-dir`, tests left out), served as OPA's bundle (a gzipped tar with
`/policy.wasm` and `/data.json`) with a strong ETag so a proxy re-fetches only what changed
(docs/contract.md §7).

Built on first request and again when a file under the directory changes. A policy that
needs a builtin the Wasm target lacks is refused when built, loudly: logged as an error and
answered 503 naming the builtins, with OPA's REST API (`jitmesh proxy --opa-url`) as the way
to run it. Callers authenticate like event-stream subscribers: an admin, or a workload's
ServiceAccount token.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from jitmesh.log import get_logger
from jitmesh.opa_server import OPANotFound, find_opa
from jitmesh.opa_wasm import OPAWasm, WasmPolicyError, bundle_parts
from pdp.attestation.identity import AttestationError, AttestationUnavailable
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.http.services import broker_of

log = get_logger("pdp.access_bundle")

DEFAULT_ENTRYPOINT = "jitmesh/access/decision"
BUILD_TIMEOUT = 60.0


class BuildFailed(Exception):
    pass


@dataclass(frozen=True)
class Built:
    bundle: bytes
    etag: str
    fingerprint: tuple[tuple[str, int, int], ...]


def fingerprint(policy_dir: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in policy_dir.rglob("*") if p.is_file() and p.suffix in (".rego", ".json", ".yaml"))
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def build(opa_bin: str, policy_dir: Path, entrypoint: str) -> bytes:
    """OPA's Wasm bundle of `entrypoint`; BuildFailed naming the problem."""
    with tempfile.TemporaryDirectory(prefix="jitmesh-access-") as tmp:
        out = Path(tmp) / "bundle.tar.gz"
        try:
            done = subprocess.run([opa_bin, "build", "-t", "wasm", "-e", entrypoint, "--ignore", "*_test.rego",
                                   "-o", str(out), str(policy_dir)], capture_output=True, timeout=BUILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildFailed(f"opa build could not run: {exc}") from None
        if done.returncode != 0:
            raise BuildFailed(f"opa build failed: {done.stderr.decode(errors='replace')[:600]}")
        bundle = out.read_bytes()
    try:
        wasm, data = bundle_parts(bundle)
        OPAWasm(wasm, data, entrypoint)  # the builtins and entrypoint check, as a proxy will load it
    except (ValueError, WasmPolicyError) as exc:
        raise BuildFailed(f"{exc}; evaluate this policy through OPA's REST API instead (jitmesh proxy --opa-url)") \
            from None
    return bundle


class AccessBundles:
    def __init__(self, policy_dir: Path, opa_bin: str) -> None:
        self.policy_dir = policy_dir
        self.opa_bin = opa_bin
        self._built: dict[str, Built] = {}
        self._lock = asyncio.Lock()

    async def get(self, entrypoint: str) -> Built:
        async with self._lock:
            current = fingerprint(self.policy_dir)
            cached = self._built.get(entrypoint)
            if cached is not None and cached.fingerprint == current:
                return cached
            try:
                bundle = await asyncio.to_thread(build, self.opa_bin, self.policy_dir, entrypoint)
            except BuildFailed as exc:
                log.error("access_policy.build_failed", entrypoint=entrypoint, policy_dir=str(self.policy_dir),
                          error=str(exc))
                raise
            built = Built(bundle, '"' + hashlib.sha256(bundle).hexdigest()[:32] + '"', current)
            self._built[entrypoint] = built
            log.info("access_policy.built", entrypoint=entrypoint, etag=built.etag, bytes=len(bundle))
            return built


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
