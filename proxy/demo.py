"""The second demo workload of `jitmesh up`: a small "orders" service behind a real
`jitmesh proxy`, and the calls the first workload makes to it every few seconds with the token
its sidecar keeps, each told on the console: an allowed call, a call to an endpoint the access
policy forbids, and once, a revocation of the caller's token that the proxy refuses at once."""

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
REVOKE_ON_ROUND = 3  # the round in which the caller's token is revoked, once
REFUSAL_WAIT = 3.0
TOLD_ROUNDS = REVOKE_ON_ROUND + 1  # after these, a call is told only when its answer changes


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
    """One round per `call()`: the allowed and the forbidden call through the proxy with the
    caller's current token, narrated; in round REVOKE_ON_ROUND, that token is revoked by jti at
    the broker (as an admin would) and the proxy's refusal is timed."""

    def __init__(self, *, proxy_url: str, token_file: Path, broker_url: str, admin_token_file: Path,
                 caller: str, say: Callable[[str], None]) -> None:
        self.proxy_url = proxy_url
        self.token_file = token_file
        self.broker_url = broker_url
        self.admin_token_file = admin_token_file
        self.caller = caller
        self.say = say
        self.round = 0
        self.revoked = False
        self._last: dict[tuple[str, str], int] = {}

    def _token(self) -> str | None:
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None

    def _call(self, method: str, path: str, token: str) -> httpx.Response:
        return httpx.request(method, self.proxy_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5)

    def call(self) -> None:
        token = self._token()
        if token is None:
            self.say(f"orders: {self.caller} has no token for the orders service yet; next round")
            return
        self.round += 1
        try:
            for method, path in (ALLOWED_CALL, FORBIDDEN_CALL):
                r = self._call(method, path, token)
                if self.round <= TOLD_ROUNDS or self._last.get((method, path)) != r.status_code:
                    verdict = {200: "ALLOWED", 401: "REFUSED", 403: "DENIED"}.get(r.status_code, "ANSWERED")
                    self.say(f"orders: {verdict} {method} {path} from {self.caller} through the proxy: "
                             f"{r.status_code} {_why(r) if r.status_code != 200 else r.text.strip()}")
                self._last[(method, path)] = r.status_code
            if self.round == TOLD_ROUNDS:
                self.say("orders: the calls go on; from now on one is told only when its answer changes")
            if self.round == REVOKE_ON_ROUND and not self.revoked:
                self.revoked = True
                self._revoke_and_watch(token)
        except httpx.HTTPError as exc:
            self.say(f"orders: the proxy could not be reached: {type(exc).__name__}: {exc}")

    def _revoke_and_watch(self, token: str) -> None:
        import jwt  # only when the demo revokes

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
                 "the proxy learns it from the broker's event stream")
        method, path = ALLOWED_CALL
        while time.monotonic() - revoked_at < REFUSAL_WAIT:
            answer = self._call(method, path, token)
            if answer.status_code == 401:
                self.say(f"orders: REFUSED {method} {path} with the revoked token "
                         f"{time.monotonic() - revoked_at:.3f}s after the revocation: 401 {_why(answer)}; "
                         "the sidecar fetches a new token")
                return
            time.sleep(0.02)
        self.say(f"orders: the proxy still admitted the revoked token {REFUSAL_WAIT:.0f}s after the revocation")
