"""Admin identity (token file, SubjectAccessReview with a fake API server), the strict
parser of revocation requests, and the pod watcher's bookkeeping."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pdp.admin.auth import (
    AddressLimiter,
    AdminReviewRateLimited,
    AdminReviewUnavailable,
    KubeAdminReviewer,
    Review,
    authenticate_admin,
    sar_spec,
)
from pdp.admin.tokens import AdminTokens
from pdp.http.errors import OAuthError
from pdp.revocation.api import parse_revocation_request
from pdp.revocation.podwatch import IssuedPod, PodWatch, revocation_id


def tokens(tmp_path: Path) -> AdminTokens:
    f = tmp_path / "admins"
    f.write_text("# ops\nsecret-admin\n")
    return AdminTokens(f)


class FakeReviewer:
    def __init__(self, answer: str | None = None, fail: bool = False, role: str = "admin") -> None:
        self.answer, self.fail, self.asked, self.role = answer, fail, 0, role

    async def review(self, token: str, client: str | None = None) -> Review | None:
        self.asked += 1
        if self.fail:
            raise AdminReviewUnavailable("API server down")
        return None if self.answer is None else Review(self.answer, self.role)  # type: ignore[arg-type]


class ThreadCalls:
    """The bounded API-server pool's interface, on the default pool (unit tests only)."""

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)


def test_a_listed_token_is_an_admin_named_by_its_fingerprint(tmp_path: Path) -> None:
    admin = asyncio.run(authenticate_admin("Bearer secret-admin", tokens(tmp_path), FakeReviewer()))
    assert admin is not None and admin.via == "admin-token-file"
    assert admin.who == "admin-token:" + hashlib.sha256(b"secret-admin").hexdigest()[:12]


def test_a_kubernetes_identity_allowed_by_subjectaccessreview_is_an_admin(tmp_path: Path) -> None:
    reviewer = FakeReviewer("system:serviceaccount:ops:revoker")
    admin = asyncio.run(authenticate_admin("Bearer kube-token", tokens(tmp_path), reviewer))
    assert admin is not None and admin.who == "system:serviceaccount:ops:revoker" and admin.via == "subjectaccessreview"
    assert admin.role == "admin"


def test_a_token_in_the_reader_file_is_a_reader(tmp_path: Path) -> None:
    f = tmp_path / "readers"
    f.write_text("reader-1\n")
    admin = asyncio.run(authenticate_admin("Bearer reader-1", tokens(tmp_path), None, AdminTokens(f)))
    assert admin is not None and admin.role == "reader" and admin.via == "reader-token-file"
    assert admin.who.startswith("reader-token:")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer other"])
def test_anything_else_is_no_admin(tmp_path: Path, header: str | None) -> None:
    assert asyncio.run(authenticate_admin(header, tokens(tmp_path), FakeReviewer(None))) is None
    assert asyncio.run(authenticate_admin(header, tokens(tmp_path), None)) is None


def test_an_unreachable_api_server_is_an_error_not_a_pass(tmp_path: Path) -> None:
    with pytest.raises(AdminReviewUnavailable):
        asyncio.run(authenticate_admin("Bearer kube-token", tokens(tmp_path), FakeReviewer(fail=True)))


def test_the_subjectaccessreview_asks_admin_on_brokers_in_jitmesh_io() -> None:
    spec = sar_spec("alice", ["ops"], "u1", {"k": ["v"]})
    assert spec["resourceAttributes"] == {"group": "jitmesh.io", "resource": "brokers", "verb": "admin"}
    assert spec["user"] == "alice" and spec["groups"] == ["ops"] and spec["uid"] == "u1"


def test_kube_reviews_are_cached_per_token_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    reviewer = KubeAdminReviewer(SimpleNamespace(configuration=None), ThreadCalls(), clock=lambda: now[0],
                                 cache_seconds=10)
    asked: list[str] = []

    def review(token: str) -> Review | None:
        asked.append(token)
        return Review("alice", "admin") if token == "good" else None

    monkeypatch.setattr(reviewer, "_review_blocking", review)
    assert asyncio.run(reviewer.review("good")) == Review("alice", "admin")
    assert asyncio.run(reviewer.review("good")) == Review("alice", "admin")
    assert asyncio.run(reviewer.review("bad")) is None
    assert asyncio.run(reviewer.review("bad")) is None
    now[0] = 11.0
    asyncio.run(reviewer.review("good"))
    assert asked == ["good", "bad", "good"]


def test_a_failing_kube_review_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    reviewer = KubeAdminReviewer(SimpleNamespace(configuration=None), ThreadCalls())

    def boom(token: str) -> Review | None:
        raise ConnectionError("refused")

    monkeypatch.setattr(reviewer, "_review_blocking", boom)
    with pytest.raises(AdminReviewUnavailable, match="ConnectionError"):
        asyncio.run(reviewer.review("t"))


def test_concurrent_asks_for_one_token_share_one_review(monkeypatch: pytest.MonkeyPatch) -> None:
    reviewer = KubeAdminReviewer(SimpleNamespace(configuration=None), ThreadCalls())
    asked: list[str] = []

    def review(token: str) -> Review | None:
        asked.append(token)
        return None

    monkeypatch.setattr(reviewer, "_review_blocking", review)

    async def many() -> None:
        await asyncio.gather(*(reviewer.review("same") for _ in range(20)))

    asyncio.run(many())
    assert asked == ["same"]


def test_reviews_past_the_burst_of_one_address_are_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    limiter = AddressLimiter(rate=1.0, burst=3, clock=lambda: now[0])
    reviewer = KubeAdminReviewer(SimpleNamespace(configuration=None), ThreadCalls(), limiter=limiter)
    monkeypatch.setattr(reviewer, "_review_blocking", lambda token: None)
    for i in range(3):
        asyncio.run(reviewer.review(f"t{i}", "10.0.0.1"))
    with pytest.raises(AdminReviewRateLimited) as limited:
        asyncio.run(reviewer.review("t9", "10.0.0.1"))
    assert limited.value.retry_after >= 1
    asyncio.run(reviewer.review("t9", "10.0.0.2"))  # another address has its own bucket
    asyncio.run(reviewer.review("t0", "10.0.0.1"))  # a cached answer costs nothing
    now[0] = 1.0
    asyncio.run(reviewer.review("t10", "10.0.0.1"))


def test_the_limiter_table_is_bounded_and_overflow_shares_one_bucket() -> None:
    limiter = AddressLimiter(rate=0.001, burst=1, max_entries=2, clock=lambda: 0.0)
    assert limiter.take("a") == 0 and limiter.take("b") == 0
    assert limiter.take("c") == 0  # the shared bucket's one token
    assert limiter.take("d") > 0
    assert len(limiter._buckets) <= 3


# --- revocation requests ------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "kind", "value"), [
    (b'{"jti": "abc", "reason": "leak"}', "jti", "abc"),
    (b'{"subject": "system:serviceaccount:payments:api", "reason": "r"}', "subject",
     "system:serviceaccount:payments:api"),
    (b'{"pod_uid": "5d1e", "reason": "r"}', "pod_uid", "5d1e"),
    (b'{"audience": "orders-db", "reason": " spaced "}', "audience", "orders-db"),
])
def test_a_revocation_request_names_one_target_and_a_reason(body: bytes, kind: str, value: str) -> None:
    req = parse_revocation_request(body, "application/json; charset=utf-8")
    assert (req.kind, req.value) == (kind, value) and req.reason.strip() == req.reason


@pytest.mark.parametrize(("body", "says"), [
    (b'{"jti": "a", "reason": "r", "jti2": 1}', "unknown field"),
    (b'{"jti": "a", "audience": "b", "reason": "r"}', "exactly one"),
    (b'{"jti": " a", "reason": "r"}', "without surrounding spaces"),
    (b'{"jti": "a\\u0000", "reason": "r"}', "printable"),
    (b'{"subject": "system:serviceaccount:a", "reason": "r"}', "<namespace>:<serviceaccount>"),
    (b'{"subject": "system:serviceaccount::b", "reason": "r"}', "<namespace>:<serviceaccount>"),
    (b'{"jti": "a", "reason": 5}', "reason must be a string, not int"),
    (b'{"jti": "a"}', "reason is required"),
    (b'{"jti": "a", "reason": "   "}', "reason is required"),
    (b'{"jti": "a", "reason": "bell\\u0007"}', "control characters (it has U+0007)"),
    (b'{"jti": "a", "reason": "r", "n": 1' + b"1" * 5000 + b"}", "a number in it has thousands of digits"),
    (b'{"jti": "a", "reason": NaN}', "not valid JSON"),
    (b'null', "JSON object"),
])
def test_bad_revocation_requests_are_invalid_request(body: bytes, says: str) -> None:
    with pytest.raises(OAuthError) as err:
        parse_revocation_request(body, None)
    assert err.value.status == 400 and says in err.value.description


# --- the pod watcher's bookkeeping ----------------------------------------------------------------

def test_the_pod_watcher_revokes_a_remembered_pod_once_and_forgets_it() -> None:
    revoked: list[IssuedPod] = []

    async def revoke(pod: IssuedPod) -> None:
        revoked.append(pod)

    async def scenario() -> None:
        watch = PodWatch(api_client=None, revoke=revoke, clock=lambda: 100.0)
        watch.issued("payments", "api-1", "uid-1", until=200.0)
        watch.issued("payments", "api-1", "uid-1", until=300.0)  # a later token extends it
        assert watch.pods["uid-1"].until == 300.0
        await watch._pod_gone("uid-1")
        await watch._pod_gone("uid-1")
        await watch._pod_gone("never-issued")

    asyncio.run(scenario())
    assert [p.uid for p in revoked] == ["uid-1"]


def test_the_pod_watcher_forgets_pods_whose_tokens_have_all_expired() -> None:
    async def revoke(pod: IssuedPod) -> None:
        raise AssertionError("nothing to revoke")

    now = [100.0]
    watch = PodWatch(api_client=None, revoke=revoke, clock=lambda: now[0])
    watch.issued("a", "p1", "u1", until=150.0)
    watch.issued("a", "p2", "u2", until=500.0)
    now[0] = 200.0
    watch._forget_expired()
    assert set(watch.pods) == {"u2"}


def test_the_pod_watcher_retries_a_failed_revocation(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    async def revoke(pod: IssuedPod) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("store down")

    monkeypatch.setattr("pdp.revocation.podwatch.RETRY_SECONDS", 0.01)
    watch = PodWatch(api_client=None, revoke=revoke)
    watch.issued("a", "p", "u", until=1e12)
    asyncio.run(watch._pod_gone("u"))
    assert len(attempts) == 3 and "u" not in watch.pods


def test_pod_revocation_ids_are_the_same_on_every_replica() -> None:
    assert revocation_id("5d1e") == revocation_id("5d1e") == "pod-deleted-5d1e"




def test_the_pod_watcher_gives_up_after_its_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    async def revoke(pod: IssuedPod) -> None:
        raise RuntimeError("store down")

    monkeypatch.setattr("pdp.revocation.podwatch.RETRY_SECONDS", 0.0)
    monkeypatch.setattr("pdp.revocation.podwatch.REVOKE_ATTEMPTS", 3)
    watch = PodWatch(api_client=None, revoke=revoke)
    watch.issued("a", "p", "u", until=1e12)
    asyncio.run(watch._pod_gone("u"))
    assert "u" not in watch.pods
