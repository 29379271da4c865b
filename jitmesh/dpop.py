"""RFC 9449 DPoP proofs: making them (the sidecar) and checking them (broker and proxy).

`check_proof` runs the checks of RFC 9449 section 4.3 one by one and raises `ProofError`
naming the first that failed. Remembering a proof's `jti` is the caller's job: the broker
keeps them in its store (shared by replicas), the proxy in a `ReplayCache` per process.
"""

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import get_default_algorithms

PROOF_TYP: Final = "dpop+jwt"
DPOP_HEADER: Final = "DPoP"
TOKEN_TYPE_DPOP: Final = "DPoP"  # token_type of a bound token, and the Authorization scheme
# Asymmetric algorithms only: `none` and the HMAC family can prove nothing about a key.
SUPPORTED_ALGS: Final = ("ES256", "ES384", "EdDSA", "PS256", "RS256")
CLOCK_SKEW: Final = 5.0  # seconds a proof's iat may lie ahead of our clock
MAX_PROOF_BYTES: Final = 8192
MAX_JTI_CHARS: Final = 256
MIN_RSA_BITS: Final = 2048

_EC_CURVE_OF_ALG: Final = {"ES256": "P-256", "ES384": "P-384"}
_THUMBPRINT_MEMBERS: Final = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]*$")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_ALGORITHMS: Final = {name: algorithm for name, algorithm in get_default_algorithms().items()
                      if name in SUPPORTED_ALGS}


def _shown(value: Any) -> str:
    """A value from a proof, fit for an error message and a header: ASCII, quoted, bounded."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ProofError(Exception):
    """A DPoP proof failed a check; the message names the check and what was wrong."""


class ReplayCacheFull(Exception):
    """The replay cache holds its maximum of live entries: refuse rather than forget one."""


@dataclass(frozen=True)
class CheckedProof:
    jkt: str  # RFC 7638 thumbprint of the proof's key
    jti: str
    iat: float


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for ES256 proofs."""
    return ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(length, "big"))


def public_jwk(key: Any) -> dict[str, str]:
    """The public JWK (RFC 7517) of a private or public EC, RSA or Ed25519/Ed448 key."""
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        if public.curve.name not in curves:
            raise ValueError(f"unsupported curve {public.curve.name}")
        size = (public.curve.key_size + 7) // 8
        numbers = public.public_numbers()
        return {"kty": "EC", "crv": curves[public.curve.name],
                "x": _b64_uint(numbers.x, size), "y": _b64_uint(numbers.y, size)}
    if isinstance(public, rsa.RSAPublicKey):
        rsa_numbers = public.public_numbers()
        return {"kty": "RSA", "n": _b64_uint(rsa_numbers.n), "e": _b64_uint(rsa_numbers.e)}
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        crv = "Ed25519" if isinstance(public, ed25519.Ed25519PublicKey) else "Ed448"
        return {"kty": "OKP", "crv": crv, "x": _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    raise ValueError(f"unsupported key type {type(public).__name__}")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members only, sorted, no whitespace."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError(f"jwk kty must be one of {sorted(_THUMBPRINT_MEMBERS)}, got {_shown(kty)}")
    members = {}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"jwk of kty {kty} needs a string member {name!r}")
        members[name] = value
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(token: str) -> str:
    """`ath`: base64url (no padding) of the SHA-256 of the token's ASCII bytes."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def _normalise_percent(part: str) -> str:
    """RFC 3986 section 6.2.2: upper-case hex digits, unreserved characters decoded."""
    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()
    return _PERCENT.sub(one, part)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    output: list[str] = []
    for segment in path.split("/")[1:] if path.startswith("/") else path.split("/"):
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    trailing = path.endswith(("/.", "/..")) and output and output[-1] != ""
    return "/" + "/".join(output) + ("/" if trailing else "")


@lru_cache(maxsize=1024)  # a server compares against few URLs, and a client names the same ones
def normalise_htu(url: str) -> str:
    """The form two `htu` values are compared in (RFC 9449 section 4.3 with RFC 3986 section 6):
    scheme and host lower-cased, the default port dropped, an empty path as "/", percent-encoding
    normalised, dot segments removed, query and fragment removed. Raises ValueError."""
    if not isinstance(url, str) or not url or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("must be an absolute http(s) URL without whitespace")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"scheme must be http or https, got {_shown(parts.scheme)}")
    if "@" in parts.netloc:
        raise ValueError("must not carry user information")
    host = parts.hostname
    if not host:
        raise ValueError("needs a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    host = _normalise_percent(host).lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = _remove_dot_segments(_normalise_percent(parts.path)) if parts.path else "/"
    return f"{scheme}://{netloc}{path}"


def make_proof(key: Any, htm: str, htu: str, *, access_token: str | None = None,
               nonce: str | None = None, now: float | None = None) -> str:
    """An ES256 proof for one request (RFC 9449 section 4.2), with `ath` when a token is given."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(18),
        "htm": htm,
        "htu": htu,
        "iat": int(time.time() if now is None else now),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": PROOF_TYP, "jwk": public_jwk(key)})


def _b64_decode(segment: str, what: str) -> bytes:
    if not _B64URL.match(segment):
        raise ProofError(f"well-formed JWT: {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise ProofError(f"well-formed JWT: {what} is not base64url") from None


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64_decode(segment, what))
    except (UnicodeDecodeError, ValueError):
        raise ProofError(f"well-formed JWT: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise ProofError(f"well-formed JWT: {what} is not a JSON object")
    return value


def _verifying_key(alg: str, jwk: dict[str, Any]) -> Any:
    """The public key of `jwk`, which must suit `alg`."""
    try:
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise ProofError("jwk: not a JSON object of key members") from None
    return _verifying_key_of(alg, canonical)


@lru_cache(maxsize=1024)  # a client signs many proofs with one key: building it is half the check
def _verifying_key_of(alg: str, canonical: str) -> Any:
    jwk = json.loads(canonical)
    kty = jwk.get("kty")
    if alg in _EC_CURVE_OF_ALG and (kty != "EC" or jwk.get("crv") != _EC_CURVE_OF_ALG[alg]):
        raise ProofError(f"jwk: alg {alg} needs an EC key on {_EC_CURVE_OF_ALG[alg]}")
    if alg in ("PS256", "RS256") and kty != "RSA":
        raise ProofError(f"jwk: alg {alg} needs an RSA key")
    if alg == "EdDSA" and (kty != "OKP" or jwk.get("crv") not in ("Ed25519", "Ed448")):
        raise ProofError("jwk: alg EdDSA needs an OKP key on Ed25519 or Ed448")
    try:
        key = _ALGORITHMS[alg].from_jwk(jwk)
    except (jwt.exceptions.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ProofError(f"jwk: not a usable {alg} public key ({_shown(str(exc))})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ProofError(f"jwk: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed")
    return key


def check_proof(proof: str, *, htm: str, htu: str, now: float, window: float,
                access_token: str | None = None, jkt: str | None = None,
                nonce: str | None = None) -> CheckedProof:
    """Check one proof against the request it came with (RFC 9449 section 4.3).

    `htu` is the request's URL as the server is reached; `window` is how old a proof's
    `iat` may be; `access_token` (then `ath` is required) and `jkt` (the token's `cnf.jkt`)
    are given when a bound token is presented; `nonce` when the server required one.
    """
    # 1-2: one well-formed JWT
    if not isinstance(proof, str) or not proof:
        raise ProofError("well-formed JWT: the DPoP header is empty")
    if len(proof) > MAX_PROOF_BYTES:
        raise ProofError(f"well-formed JWT: longer than {MAX_PROOF_BYTES} bytes")
    segments = proof.split(".")
    if len(segments) != 3:
        raise ProofError("well-formed JWT: a single compact JWS with three parts is needed")
    header = _json_object(segments[0], "header")
    claims = _json_object(segments[1], "payload")
    signature = _b64_decode(segments[2], "signature")
    # 3: required header parameters and claims
    for name in ("typ", "alg", "jwk"):
        if name not in header:
            raise ProofError(f"required claims: header lacks {name!r}")
    for name in ("jti", "htm", "htu", "iat"):
        if name not in claims:
            raise ProofError(f"required claims: payload lacks {name!r}")
    if "crit" in header:
        raise ProofError("well-formed JWT: no critical header parameter is understood")
    # 4: typ
    if header["typ"] != PROOF_TYP:
        raise ProofError(f"typ: must be {PROOF_TYP!r}, got {_shown(header['typ'])}")
    # 5: an asymmetric algorithm we support
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGS:
        raise ProofError(f"alg: {_shown(alg)} is not one of {', '.join(SUPPORTED_ALGS)}")
    # 7 (before the signature, so a private key is never used): no private members in jwk
    jwk = header["jwk"]
    if not isinstance(jwk, dict):
        raise ProofError("jwk: must be a JSON object")
    private = sorted(_PRIVATE_MEMBERS.intersection(jwk))
    if private:
        raise ProofError(f"jwk: carries private key members {private}")
    # 6: the signature verifies with jwk
    key = _verifying_key(alg, jwk)
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    if not _ALGORITHMS[alg].verify(signing_input, key, signature):
        raise ProofError("signature: does not verify with the header's jwk")
    try:
        proof_jkt = thumbprint(jwk)
    except ValueError as exc:
        raise ProofError(f"jwk: {exc}") from None
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise ProofError(f"jti: must be a non-empty string of at most {MAX_JTI_CHARS} characters")
    # 8: htm
    if claims["htm"] != htm:
        raise ProofError(f"htm: proof is for {_shown(claims['htm'])}, request is {_shown(htm)}")
    # 9: htu, query and fragment ignored
    try:
        proof_htu = normalise_htu(claims["htu"])
    except ValueError as exc:
        raise ProofError(f"htu: {exc}") from None
    if proof_htu != normalise_htu(htu):
        raise ProofError(f"htu: proof is for {_shown(proof_htu)}, request is {_shown(normalise_htu(htu))}")
    # 10: nonce, when the server asked for one
    if nonce is not None and claims.get("nonce") != nonce:
        raise ProofError("nonce: missing or not the one the server provided")
    # 11: iat within the window
    iat = claims["iat"]
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise ProofError("iat: must be a number")
    if iat > now + CLOCK_SKEW:
        raise ProofError(f"iat: {iat - now:.0f} s in the future, at most {CLOCK_SKEW:.0f} s allowed")
    if iat < now - window:
        raise ProofError(f"iat: {now - iat:.0f} s old, at most {window:.0f} s allowed")
    # 12: ath and the key binding, when a token is presented
    if access_token is not None:
        if "ath" not in claims:
            raise ProofError("ath: missing, but an access token was presented")
        if not isinstance(claims["ath"], str) or not secrets.compare_digest(
                claims["ath"], access_token_hash(access_token)):
            raise ProofError("ath: does not match the hash of the presented access token")
    if jkt is not None and not secrets.compare_digest(proof_jkt, jkt):
        raise ProofError("jkt: the proof's key is not the one the token is bound to")
    return CheckedProof(jkt=proof_jkt, jti=jti, iat=float(iat))


class ReplayCache:
    """The `jti`s of accepted proofs, per process, each kept as long as its proof could pass
    the `iat` check; at most `max_entries` live ones (a full cache refuses, never forgets)."""

    def __init__(self, *, window: float, max_entries: int = 100_000) -> None:
        self._ttl = window + CLOCK_SKEW
        self._max = max_entries
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def remember(self, jti: str, now: float) -> bool:
        """True the first time `jti` is seen within its window, False for a replay.
        Raises ReplayCacheFull when `max_entries` live entries are held."""
        with self._lock:
            while self._expiry:
                oldest, expiry = next(iter(self._expiry.items()))
                if expiry > now:
                    break
                del self._expiry[oldest]
            if jti in self._expiry:
                return False
            if len(self._expiry) >= self._max:
                raise ReplayCacheFull(f"{self._max} proofs remembered within the window")
            self._expiry[jti] = now + self._ttl
            return True
