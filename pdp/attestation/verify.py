"""Who is asking: verify a projected ServiceAccount token and read its Kubernetes identity.

Two ways, as `--attestation` picks:
- `jwks`: offline, against the cluster's service-account JWKS (`--jwks-file`, reloaded when
  the file changes, or `--jwks-url`, cached and refetched on an unknown `kid`).
- `tokenreview`: online, the API server's TokenReview.
Optionally (`--pod-lookup`) the bound pod is read from the API server for its labels and
images, and a token whose pod is gone, or whose pod uid differs, is refused.

`AttestationError` means the token is not acceptable (`invalid_grant`);
`AttestationUnavailable` means the broker could not find out (`503`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt

from jitmesh.contract import KUBERNETES_CLAIM, serviceaccount_subject
from jitmesh.log import get_logger
from pdp.attestation.identity import (
    AttestationError,
    AttestationUnavailable,
    PodInfo,
    PodReader,
    Subject,
    check_subject_age,
)

log = get_logger("pdp.attestation")

# Asymmetric algorithms only, each with the key type it must be used with: `none` and
# HS* are refused, and an RS256 header over an EC key (or HS256 over an RSA key) is too.
ALGORITHM_KEY_TYPES: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
LEEWAY_SECONDS = 5
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class VerificationKey:
    """One public key of the cluster's JWKS."""

    kid: str
    kty: str
    key: Any
    crv: str | None = None
    alg: str | None = None


# --- pure pieces -----------------------------------------------------------------------

def subject_from_claims(claims: Mapping[str, Any]) -> Subject:
    """The Kubernetes identity of a verified projected ServiceAccount token."""
    k8s = claims.get(KUBERNETES_CLAIM)
    if not isinstance(k8s, dict):
        raise AttestationError(f"subject token has no {KUBERNETES_CLAIM!r} claim: not a projected ServiceAccount token")
    namespace = k8s.get("namespace")
    sa = k8s.get("serviceaccount")
    sa_name = sa.get("name") if isinstance(sa, dict) else None
    if not isinstance(namespace, str) or not namespace or not isinstance(sa_name, str) or not sa_name:
        raise AttestationError(f"subject token's {KUBERNETES_CLAIM!r} claim lacks namespace or serviceaccount.name")
    sub = claims.get("sub")
    if sub != serviceaccount_subject(namespace, sa_name):
        raise AttestationError(f"subject token's sub {sub!r:.100} does not match its {KUBERNETES_CLAIM!r} claim")
    pod: PodInfo | None = None
    raw_pod = k8s.get("pod")
    if raw_pod is not None:
        if not isinstance(raw_pod, dict) or not isinstance(raw_pod.get("name"), str) \
                or not isinstance(raw_pod.get("uid"), str):
            raise AttestationError("subject token's pod binding must have a name and a uid")
        pod = PodInfo(name=raw_pod["name"], uid=raw_pod["uid"])
    iat = claims.get("iat")
    issued_at = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None
    return Subject(sub=sub, issuer=str(claims.get("iss", "")), namespace=namespace,
                   service_account=sa_name, pod=pod, issued_at=issued_at)


def parse_jwks(doc: Any) -> dict[str, VerificationKey]:
    """kid -> key of a JWKS document. Keys without a kid, or of a kind no accepted
    algorithm uses, are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document: expected {\"keys\": [...]}")
    keys: dict[str, VerificationKey] = {}
    for raw in doc["keys"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
            continue
        if raw.get("kty") not in ("RSA", "EC", "OKP") or raw.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(raw).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("jwks.key_skipped", kid=raw.get("kid"))
            continue
        keys[raw["kid"]] = VerificationKey(kid=raw["kid"], kty=raw["kty"], key=key, crv=raw.get("crv"),
                                           alg=raw.get("alg"))
    return keys



def check_algorithm(alg: Any, key: VerificationKey) -> str:
    """The header's `alg`, if it is asymmetric and fits the key it names."""
    if not isinstance(alg, str) or alg not in ALGORITHM_KEY_TYPES:
        raise AttestationError(f"subject token alg {alg!r:.40} is not accepted; expected one of "
                               + ", ".join(ALGORITHM_KEY_TYPES))
    kty, crv = ALGORITHM_KEY_TYPES[alg]
    if key.kty != kty or (crv is not None and key.crv != crv):
        raise AttestationError(f"subject token alg {alg} does not fit its key (kty {key.kty})")
    if key.alg is not None and key.alg != alg:
        raise AttestationError(f"subject token alg {alg} differs from its key's alg {key.alg}")
    return alg


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, to pick the key; `jwt.decode` checks it again in full. (PyJWT's own
    header reader validates the whole token character by character, which showed as the
    largest cost of an issuance when profiled.)"""
    head, sep, _ = token.partition(".")
    if not sep or len(head) > 2048:
        raise AttestationError("subject token is not a JWT (compact JWS)")
    try:
        doc = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        raise AttestationError("subject token is not a JWT: its header is not base64url JSON") from None
    if not isinstance(doc, dict):
        raise AttestationError("subject token is not a JWT: its header is not a JSON object")
    return doc


def verify_jwt(token: str, keys: Mapping[str, VerificationKey], issuer: str, audience: str,
               header: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Signature, alg, kid, iss, aud, exp, nbf of a subject token; its claims if all hold."""
    if header is None:
        header = unverified_header(token)
    kid = header.get("kid")
    alg = header.get("alg")
    if alg is None:
        raise AttestationError("subject token header has no alg; expected one of " + ", ".join(ALGORITHM_KEY_TYPES))
    if not isinstance(alg, str) or alg not in ALGORITHM_KEY_TYPES:
        raise AttestationError(f"subject token alg {alg!r:.40} is not accepted; expected one of "
                               + ", ".join(ALGORITHM_KEY_TYPES))
    if kid is None:
        raise AttestationError("subject token header has no kid, so no key of the cluster's JWKS can verify it")
    if not isinstance(kid, str) or kid not in keys:
        raise AttestationError(f"subject token kid {kid!r:.80} is not a key of the cluster's JWKS")
    key = keys[kid]
    check_algorithm(alg, key)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[alg], audience=audience, issuer=issuer, leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
        )
    except jwt.ExpiredSignatureError:
        raise AttestationError("subject token has expired") from None
    except jwt.ImmatureSignatureError:
        raise AttestationError("subject token is not yet valid (nbf/iat in the future)") from None
    except jwt.InvalidIssuerError:
        raise AttestationError(f"subject token issuer is not {issuer!r}") from None
    except jwt.InvalidAudienceError:
        raise AttestationError(f"subject token audience does not include {audience!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AttestationError(f"subject token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise AttestationError("subject token signature does not verify") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AttestationError(f"subject token is invalid: {exc}") from None
    return claims


# --- JWKS sources ----------------------------------------------------------------------

class KeySource(Protocol):
    async def keys(self, kid: str | None) -> Mapping[str, VerificationKey]: ...

    async def close(self) -> None: ...


class JWKSFile:
    """The JWKS in a file, reloaded when its mtime or size changes (checked at most once a second)."""

    def __init__(self, path: Path, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._keys: dict[str, VerificationKey] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            if self._stamp is None:
                raise AttestationUnavailable(f"cannot read --jwks-file {str(self.path)!r}: {exc}") from None
            return  # keep the last good keys while the file is being replaced
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return
        try:
            keys = parse_jwks(json.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:
            if self._stamp is None:
                raise AttestationUnavailable(f"--jwks-file {str(self.path)!r} is not a JWKS: {exc}") from None
            log.warning("jwks.reload_failed", path=str(self.path), error=str(exc))
            return
        self._keys, self._stamp = keys, stamp
        log.info("jwks.loaded", path=str(self.path), kids=sorted(keys))

    async def keys(self, kid: str | None) -> Mapping[str, VerificationKey]:
        now = time.monotonic()
        if self._stamp is None or now - self._checked >= self.check_interval or kid not in self._keys:
            self._checked = now
            self._reload_if_changed()
        return self._keys

    async def close(self) -> None:
        return None


class JWKSURL:
    """The JWKS at a URL (kube-apiserver's `/openid/v1/jwks`), cached for `max_age` and
    refetched when a token names an unknown `kid`, at most once per `min_refetch`."""

    def __init__(self, url: str, client: httpx.AsyncClient | None = None, max_age: float = 300.0,
                 min_refetch: float = 10.0, timeout: float = 3.0) -> None:
        self.url = url
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self.max_age = max_age
        self.min_refetch = min_refetch
        self._keys: dict[str, VerificationKey] = {}
        self._fetched: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        try:
            r = await self._client.get(self.url, headers={"Accept": "application/json"})
            r.raise_for_status()
            keys = parse_jwks(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            self._fetched = time.monotonic()  # rate-limit retries too
            if not self._keys:
                raise AttestationUnavailable(f"cannot fetch --jwks-url {self.url}: {exc}") from None
            log.warning("jwks.fetch_failed", url=self.url, error=str(exc))
            return
        self._keys, self._fetched = keys, time.monotonic()
        log.info("jwks.loaded", url=self.url, kids=sorted(keys))

    def _needs_fetch(self, kid: str | None, now: float) -> bool:
        if self._fetched is None:
            return True
        age = now - self._fetched
        return age >= self.max_age or (kid not in self._keys and age >= self.min_refetch)

    async def keys(self, kid: str | None) -> Mapping[str, VerificationKey]:
        if self._needs_fetch(kid, time.monotonic()):
            async with self._lock:
                if self._needs_fetch(kid, time.monotonic()):
                    await self._fetch()
        if not self._keys:
            raise AttestationUnavailable(f"no keys from --jwks-url {self.url}")
        return self._keys

    async def close(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class _Verified:
    kid: str
    key: VerificationKey
    exp: float
    subject: Subject


class VerifiedTokens:
    """Subject tokens that passed verification, remembered until they expire. A sidecar
    presents the same projected token for each of its audiences and each refresh, and
    signature plus claim checks are the largest CPU cost of an issuance. An entry counts
    only while its key is still the one the JWKS publishes under its kid."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, _Verified] = {}

    def get(self, token: str, keys: Mapping[str, VerificationKey], now: float) -> Subject | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if now >= hit.exp + LEEWAY_SECONDS or keys.get(hit.kid) is not hit.key:
            del self._entries[token]
            return None
        return hit.subject

    def kid_of(self, token: str) -> str | None:
        """The kid a remembered token named (its header was read when it was verified)."""
        hit = self._entries.get(token)
        return None if hit is None else hit.kid

    def put(self, token: str, kid: str, key: VerificationKey, exp: float, subject: Subject) -> None:
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[token] = _Verified(kid, key, exp, subject)


class JWKSAttestor:
    def __init__(self, source: KeySource, issuer: str, audience: str, pods: PodReader | None = None,
                 cache: VerifiedTokens | None = None, max_age: float | None = None) -> None:
        self.source = source
        self.max_age = max_age  # --max-subject-token-age
        self.issuer = issuer
        self.audience = audience
        self.pods = pods
        self.cache = cache if cache is not None else VerifiedTokens()

    async def attest(self, token: str) -> Subject:
        remembered_kid = self.cache.kid_of(token)
        if remembered_kid is not None:  # the same token string: its header need not be read again
            subject = self.cache.get(token, await self.source.keys(remembered_kid), time.time())
            if subject is not None:
                check_subject_age(subject, self.max_age, time.time())
                return await bind_pod(subject, self.pods)
        header = unverified_header(token)
        kid = header.get("kid")
        keys = await self.source.keys(kid if isinstance(kid, str) else None)
        subject = self.cache.get(token, keys, time.time())
        if subject is None:
            claims = verify_jwt(token, keys, self.issuer, self.audience, header)
            subject = subject_from_claims(claims)
            if not isinstance(kid, str):  # verify_jwt refuses these; keep the type checker honest
                raise AttestationError("subject token has no kid")
            self.cache.put(token, kid, keys[kid], float(claims["exp"]), subject)
        check_subject_age(subject, self.max_age, time.time())
        return await bind_pod(subject, self.pods)

    async def close(self) -> None:
        await self.source.close()


async def bind_pod(subject: Subject, pods: PodReader | None) -> Subject:
    """With a pod reader, fill in the bound pod's labels and images; refuse when it is gone
    or is another pod of the same name."""
    if pods is None or subject.pod is None:
        return subject
    live = await pods.read_pod(subject.namespace, subject.pod.name)
    if live is None:
        raise AttestationError(f"the bound pod {subject.namespace}/{subject.pod.name} no longer exists")
    if live.uid != subject.pod.uid:
        raise AttestationError(f"the bound pod {subject.namespace}/{subject.pod.name} has uid {live.uid}, "
                               f"the token was bound to {subject.pod.uid}")
    return replace(subject, pod=live)


# --- Kubernetes API ----------------------------------------------------------------------
