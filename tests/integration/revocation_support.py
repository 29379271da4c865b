"""Helpers shared by the revocation tests: admin calls, SSE reading, waiting."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt

from jitmesh.devissuer import DevIssuer
from pdp.process import BrokerProcess
from tests.fixtures.broker import BrokerHandle, BrokerLauncher

POLICIES = Path(__file__).parent / "revocation_policies"


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition", step: float = 0.02) -> float:
    """Seconds it took; AssertionError after `timeout`."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def revoke(broker: BrokerHandle, **body: Any) -> httpx.Response:
    return httpx.post(f"{broker.url}/v1/admin/revocations", json=body, headers=broker.admin_headers(), timeout=10)


def revoked(broker: BrokerHandle, **body: Any) -> dict[str, Any]:
    body.setdefault("reason", "test")
    r = revoke(broker, **body)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def lift(broker: BrokerHandle, revocation_id: str) -> httpx.Response:
    return httpx.delete(f"{broker.url}/v1/admin/revocations/{revocation_id}", headers=broker.admin_headers(),
                        timeout=10)


def introspect(broker: BrokerHandle, token: str) -> dict[str, Any]:
    r = httpx.post(f"{broker.url}/introspect", data={"token": token}, headers=broker.admin_headers(), timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def file_jti(path: Path) -> str | None:
    try:
        return jti_of(path.read_text())
    except (OSError, jwt.PyJWTError):
        return None


def audit(broker: BrokerHandle, **params: Any) -> list[dict[str, Any]]:
    params.setdefault("limit", 1000)
    r = httpx.get(f"{broker.url}/v1/admin/audit", params=params, headers=broker.admin_headers(), timeout=10)
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["records"]
    return records


class EventReader:
    """A blocking SSE client of /v1/revocations/events: `next_event()` returns (event, id, data)."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None, read_timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=read_timeout))
        self._cm = self.client.stream("GET", f"{url}/v1/revocations/events", headers=headers)
        self.response = self._cm.__enter__()
        self._lines: Iterator[str] = self.response.iter_lines()

    def next_event(self) -> tuple[str, str | None, dict[str, Any]]:
        event, eid, data = "message", None, ""
        for line in self._lines:
            if line == "":
                if data:
                    return event, eid, json.loads(data)
                event, eid, data = "message", None, ""
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                eid = value
            elif name == "data":
                data += value
        raise EOFError("the event stream ended")

    def next_of(self, kind: str) -> tuple[str | None, dict[str, Any]]:
        while True:
            event, eid, data = self.next_event()
            if event == kind:
                return eid, data

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self.client.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReplicaLauncher(BrokerLauncher):
    """Broker replicas as a deployment runs them: one `--issuer` (the Service's URL), one
    ServiceAccount issuer, one store; each with its own port and admin token file."""

    def __init__(self, root: Path, issuer_url: str) -> None:
        super().__init__(root)
        self.issuer_url = issuer_url

    def replica(self, opa_url: str, store: str, dev: DevIssuer, **flags: object) -> BrokerHandle:
        # BrokerLauncher.start takes `issuer` for the DevIssuer; the broker's --issuer goes in by hand
        n = len(self.started)
        home = self.root / f"replica-{n}"
        home.mkdir(parents=True, exist_ok=True)
        admin_token = secrets.token_urlsafe(24)
        admin_file = home / "admin-tokens"
        admin_file.write_text(f"{admin_token}\n")
        jwks_file = dev.write_jwks(home / "jwks.json")
        all_flags: dict[str, object] = {"opa_url": opa_url, "jwks_file": jwks_file, "subject_issuer": dev.issuer,
                                        "store": store, "admin_token_file": admin_file, "issuer": self.issuer_url,
                                        **flags}
        log_path = home / "broker.log"
        proc = BrokerProcess(flags=all_flags, log_path=log_path)
        handle = BrokerHandle(process=proc, issuer=dev, admin_token=admin_token, admin_token_file=admin_file,
                              jwks_file=jwks_file, store_url=store, opa_url=opa_url, log_path=log_path)
        self.started.append(handle)
        proc.start(timeout=30)
        return handle
