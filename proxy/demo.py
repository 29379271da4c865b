"""The second demo workload of `jitmesh up`: a small "orders" service behind a real
`jitmesh proxy`, and the calls the first workload makes to it every few seconds, each told on
the console. The application sends no credential: its sidecar's forwarder adds a DPoP-bound
token and a fresh proof. Told: an allowed call, a call to an endpoint the access policy
forbids, once a thief's replay of the token read from its file (refused: the key stays in the
sidecar), and once a revocation of the caller's token that the proxy refuses at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ALLOWED_CALL = ("GET", "/orders/42")
FORBIDDEN_CALL = ("GET", "/admin/export")  # the shipped access policy has no such endpoint
STEAL_ON_ROUND = 2  # the round in which a thief replays the caller's token, once
REVOKE_ON_ROUND = 3  # the round in which the caller's token is revoked, once
REFUSAL_WAIT = 3.0
TOLD_ROUNDS = REVOKE_ON_ROUND + 1  # after these, a call is told only when its answer changes
# 502/503/504 come from the sidecar's forwarder: no token yet, or the proxy not reached
VERDICTS = {200: "ALLOWED", 401: "REFUSED", 403: "DENIED", 502: "FAILED", 503: "FAILED", 504: "FAILED"}


class _Orders(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"order": self.path.rsplit("/", 1)[-1],
                           "caller": self.headers.get("x-jitmesh-subject"),
                           "scope": self.headers.get("x-jitmesh-scope")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OrdersService:
    """The demo upstream on a free loopback port, served on a thread of `jitmesh up`."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Orders)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-orders", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OrdersService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _why(r: httpx.Response) -> str:
    if r.status_code == 401:
        return r.headers.get("www-authenticate", "")
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict) and "reasons" in body:
        return f"{'; '.join(str(x) for x in body['reasons'])} (decision {body.get('decision_id')})"
    return json.dumps(body)[:200]


class DemoCaller:
    """One round per `call()`, as the first workload's application: the allowed and the forbidden
    call, sent with no credential to its sidecar's forwarder (`upstream_url`), which adds the
    DPoP-bound token and a fresh proof on the way to the proxy; each answer narrated. In round
    STEAL_ON_ROUND, once, a thief's replay of the token read from its file, refused by the proxy
    for want of the key; in round REVOKE_ON_ROUND, once, that token revoked by jti at the broker
    (as an admin would) and the proxy's refusal of it timed."""

    def __init__(self, *, upstream_url: str, proxy_url: str, token_file: Path, broker_url: str,
                 admin_token_file: Path, caller: str, say: Callable[[str], None]) -> None:
        self.upstream_url = upstream_url
        self.proxy_url = proxy_url
        self.token_file = token_file
        self.broker_url = broker_url
        self.admin_token_file = admin_token_file
        self.caller = caller
        self.say = say
        self.round = 0
        self.stolen = False
        self.revoked = False
        self._last: dict[tuple[str, str], int] = {}

    def _token_on_disk(self) -> str | None:
        """The token in the sidecar's file, as anyone who can read the file gets it."""
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None

    def _call(self, method: str, path: str) -> httpx.Response:
        # No Authorization, no DPoP: the credential is the sidecar's to add.
        return httpx.request(method, self.upstream_url + path, timeout=5)

    def call(self) -> None:
        try:
            answers = [(method, path, self._call(method, path)) for method, path in (ALLOWED_CALL, FORBIDDEN_CALL)]
            if self.round == 0 and all(_sidecar_has_no_token(r) for _, _, r in answers):
                self.say(f"orders: the sidecar of {self.caller} holds no token for the orders service yet; "
                         "next round")
                return
            self.round += 1
            for method, path, r in answers:
                if self.round <= TOLD_ROUNDS or self._last.get((method, path)) != r.status_code:
                    verdict = VERDICTS.get(r.status_code, "ANSWERED")
                    self.say(f"orders: {verdict} {method} {path} from {self.caller} through the proxy: "
                             f"{r.status_code} {_why(r) if r.status_code != 200 else r.text.strip()}")
                self._last[(method, path)] = r.status_code
            if self.round == TOLD_ROUNDS:
                self.say("orders: the calls go on; from now on one is told only when its answer changes")
            if self.round >= STEAL_ON_ROUND and not self.stolen:
                self._replay_stolen_token()
            if self.round >= REVOKE_ON_ROUND and not self.revoked:
                self._revoke_and_watch()
        except httpx.HTTPError as exc:
            self.say(f"orders: the sidecar's forwarder or the proxy could not be reached: {type(exc).__name__}: {exc}")

    def _replay_stolen_token(self) -> None:
        """What a thief who can read the token file gets: the token without the sidecar's key,
        refused as `Bearer` and as `DPoP` with a proof of the thief's own key."""
        from jitmesh import dpop  # only when the demo steals

        token = self._token_on_disk()
        if token is None:
            return  # between two tokens: the thief tries again next round
        self.stolen = True
        method, path = ALLOWED_CALL
        url = self.proxy_url + path
        self.say(f"orders: STOLEN: a thief who can read {self.token_file} replays the token of {self.caller} "
                 "straight to the proxy; it is bound to a key only the sidecar holds (cnf.jkt)")
        thief_key = dpop.new_key()
        attempts = (("as Bearer", {"Authorization": f"Bearer {token}"}),
                    ("as DPoP with a proof of the thief's own key",
                     {"Authorization": f"DPoP {token}",
                      "DPoP": dpop.make_proof(thief_key, method, url, access_token=token)}))
        for how, headers in attempts:
            r = httpx.request(method, url, headers=headers, timeout=5)
            if r.status_code == 401:
                self.say(f"orders: REFUSED {method} {path} with the stolen token {how}: 401 {_why(r)}")
            else:
                self.say(f"orders: the proxy answered {r.status_code} to {method} {path} with the stolen token "
                         f"{how}; it should have refused it")

    def _revoke_and_watch(self) -> None:
        import jwt  # only when the demo revokes

        token = self._token_on_disk()  # the admin's view: which token (jti) to revoke
        if token is None:
            return  # between two tokens: revoke next round
        self.revoked = True
        jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
        admin = next(line.strip() for line in self.admin_token_file.read_text().splitlines()
                     if line.strip() and not line.startswith("#"))
        r = httpx.post(self.broker_url + "/v1/admin/revocations", timeout=10,
                       headers={"Authorization": f"Bearer {admin}"},
                       json={"jti": jti, "reason": "jitmesh up: the demo revokes the caller's token once"})
        if r.status_code != 201:
            self.say(f"orders: the demo revocation failed: {r.status_code} {r.text[:200]}")
            return
        revoked_at = time.monotonic()
        self.say(f"orders: REVOKED the token of {self.caller} for the orders service (jti {jti}) at the broker; "
                 "the proxy and the sidecar learn it from the broker's event stream")
        # The sidecar drops the token at the same event, so its own calls cannot time the proxy:
        # the token's copy from the file goes straight to the proxy, which checks revocation
        # before the key binding, until it names the token revoked.
        method, path = ALLOWED_CALL
        while time.monotonic() - revoked_at < REFUSAL_WAIT:
            answer = httpx.request(method, self.proxy_url + path, headers={"Authorization": f"Bearer {token}"},
                                   timeout=5)
            if answer.status_code == 401 and "revoked" in _why(answer):
                self.say(f"orders: REFUSED {method} {path} with the revoked token "
                         f"{time.monotonic() - revoked_at:.3f}s after the revocation: 401 {_why(answer)}; "
                         "the sidecar drops it at the same event and fetches a new token")
                return
            time.sleep(0.02)
        self.say(f"orders: the proxy did not call the token revoked {REFUSAL_WAIT:.0f}s after the revocation")


def _sidecar_has_no_token(r: httpx.Response) -> bool:
    if r.status_code != 503:
        return False
    try:
        return bool(r.json().get("error") == "token_unavailable")
    except (ValueError, AttributeError):
        return False
