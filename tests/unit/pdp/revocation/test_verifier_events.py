"""What a verifier (an access proxy) is shown on the event stream, and how it names the
audiences it serves (pdp/revocation/verifiers.py)."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from pdp.http.errors import OAuthError
from pdp.revocation.events import Announcement, EventHub, Viewer, event_doc, sse_announcement
from pdp.revocation.verifiers import requested_audiences
from pdp.store.base import Revocation, RevocationEvent, RevocationKind

VERIFIER = Viewer(admin=False, subject="system:serviceaccount:orders:api", pod_uid="pod-9", name="proxy",
                  audiences=frozenset({"orders-api"}))


def event(kind: RevocationKind, value: str) -> RevocationEvent:
    r = Revocation(id="r1", kind=kind, value=value, reason="why", created_at=10.0, created_by="alice",
                   expires_at=99.0 if kind == "jti" else None)
    return RevocationEvent(seq=1, action="revoked", revocation=r, time=10.0)


@pytest.mark.parametrize(("kind", "value", "shown"), [
    ("subject", "system:serviceaccount:demo:demo-app", True),   # any caller's subject
    ("pod_uid", "pod-of-a-caller", True),
    ("jti", "some-jti", True),
    ("audience", "orders-api", True),                           # served
    ("audience", "payments-api", False),                        # not served
])
def test_a_verifier_sees_every_caller_revocation_and_its_served_audiences_only(
        kind: RevocationKind, value: str, shown: bool) -> None:
    assert (event_doc(event(kind, value), VERIFIER) is not None) is shown


def test_a_verifier_is_not_told_who_revoked() -> None:
    doc = event_doc(event("subject", "system:serviceaccount:demo:demo-app"), VERIFIER)
    assert doc is not None and "created_by" not in doc


def test_a_jti_event_carries_its_expiry_for_the_verifier() -> None:
    doc = event_doc(event("jti", "j"), VERIFIER)
    assert doc is not None and doc["expires_at"] == 99.0


def jti_event(audience: str | None) -> RevocationEvent:
    r = Revocation(id="r2", kind="jti", value="j", reason="why", created_at=10.0, created_by="holder",
                   expires_at=99.0, audience=audience)
    return RevocationEvent(seq=2, action="revoked", revocation=r, time=10.0)


def test_a_jti_event_of_a_served_audience_names_it_for_the_verifier() -> None:
    doc = event_doc(jti_event("orders-api"), VERIFIER)
    assert doc is not None and doc["audience"] == "orders-api" and "reason" not in doc


def test_a_jti_event_of_an_audience_the_verifier_does_not_serve_is_not_shown() -> None:
    assert event_doc(jti_event("payments-api"), VERIFIER) is None


def test_a_jti_event_of_an_unknown_audience_is_shown_to_every_verifier() -> None:
    doc = event_doc(jti_event(None), VERIFIER)
    assert doc is not None and doc["audience"] is None


def test_a_sidecar_without_audiences_still_sees_only_its_own_subject() -> None:
    sidecar = Viewer(admin=False, subject="system:serviceaccount:orders:api", name="sidecar")
    assert event_doc(event("subject", "system:serviceaccount:demo:demo-app"), sidecar) is None


def test_no_audience_parameter_is_not_a_verifier() -> None:
    assert requested_audiences([]) is None


def test_the_served_audiences_are_named_by_repeated_parameters() -> None:
    assert requested_audiences(["orders-api", "payments-api"]) == frozenset({"orders-api", "payments-api"})


@pytest.mark.parametrize("values", [[""], ["x"] * 33, ["bad\nname"]])
def test_malformed_audience_parameters_are_invalid_request(values: list[str]) -> None:
    with pytest.raises(OAuthError) as info:
        requested_audiences(values)
    assert info.value.status == 400


def test_a_policy_announcement_goes_to_verifier_streams_only() -> None:
    hub = EventHub(MagicMock(), start_seq=0)
    proxy = hub.open(VERIFIER)
    sidecar = hub.open(Viewer(admin=False, subject="system:serviceaccount:demo:demo-app", name="sidecar"))
    admin = hub.open(Viewer(admin=True, name="dblogins"))
    told = hub.announce(Announcement("policy", {"entrypoint": "jitmesh/access/decision", "etag": '"e"'}))
    assert told == 1
    assert proxy.queue.get_nowait() == Announcement("policy", {"entrypoint": "jitmesh/access/decision",
                                                               "etag": '"e"'})
    assert sidecar.queue.empty() and admin.queue.empty()


def test_a_policy_announcement_is_an_sse_event_without_an_id() -> None:
    text = sse_announcement(Announcement("policy", {"etag": '"e"'}))
    assert text == 'event: policy\ndata: {"etag":"\\"e\\""}\n\n'
