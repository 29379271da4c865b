"""Live shadowing (pdp/shadow/live.py) against fake OPA clients and a fake store: the
enforced answer is returned as is and at once; the candidate is compared afterwards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from jitmesh.opa_wasm import WasmPolicyError
from pdp.opa import OPAUnavailable
from pdp.shadow.live import LiveShadow, WasmCandidate
from pdp.store.base import StoreError
from pdp.store.shadow import ShadowCount, ShadowSample

INPUT = {"subject": {"sub": "system:serviceaccount:payments:api"},
         "request": {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": None}}
ALLOW = {"result": {"allow": True, "scopes": ["read"], "ttl_seconds": 300}}
DENY = {"result": {"allow": False, "reasons": ["no"]}}


class FakeOPA:
    """Answers each policy path from a table; an entry may be an exception or an Event to wait on."""

    def __init__(self, answers: dict[str, Any], gate: asyncio.Event | None = None) -> None:
        self.answers = answers
        self.gate = gate
        self.calls: list[str] = []
        self.closed = False

    async def query(self, policy_path: str, input_doc: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(policy_path)
        answer = self.answers[policy_path]
        if policy_path == "candidate" and self.gate is not None:
            await self.gate.wait()
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    async def close(self) -> None:
        self.closed = True


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.counts: list[ShadowCount] = []
        self.samples: list[ShadowSample] = []

    async def record_shadow(self, counts: list[ShadowCount], samples: list[ShadowSample], per_class: int) -> None:
        if self.fail:
            raise StoreError("store down")
        self.counts += counts
        self.samples += samples

    async def prune_shadow(self, before: float) -> None:
        pass


def shadow(candidate: Any, *, store: FakeStore | None = None, timeout: float = 1.0, max_in_flight: int = 8,
           gate: asyncio.Event | None = None) -> tuple[LiveShadow, FakeOPA]:
    fake = FakeOPA({"candidate": candidate}, gate)
    s = LiveShadow("candidate", "http://unused", store or FakeStore(), CollectorRegistry(),  # type: ignore[arg-type]
                   timeout=timeout, max_in_flight=max_in_flight, opa=fake)  # type: ignore[arg-type]
    return s, fake


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def classes(s: LiveShadow) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in s.tally.counts():
        out[c.shadow_class] = out.get(c.shadow_class, 0) + c.count
    return out


def metric(s: LiveShadow, cls: str) -> float:
    return s.comparisons.labels(cls)._value.get()


def test_enforced_answer_is_returned_unchanged_and_candidate_compared() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, int], float]:
        s, _ = shadow(ALLOW)
        raw = await s.query(FakeOPA({"enforced": DENY}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await settle()
        return raw, classes(s), metric(s, "deny_to_allow")

    raw, counted, deny_to_allow = asyncio.run(main())
    assert raw == DENY
    assert counted == {"deny_to_allow": 1}
    assert deny_to_allow == 1


def test_query_returns_before_a_slow_candidate_answers() -> None:
    async def main() -> tuple[bool, dict[str, int], dict[str, int]]:
        gate = asyncio.Event()
        s, _ = shadow(ALLOW, gate=gate)
        raw = await asyncio.wait_for(
            s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0), 0.5)  # type: ignore[arg-type]
        before = classes(s)
        gate.set()
        await settle()
        return raw == ALLOW, before, classes(s)

    returned, before, after = asyncio.run(main())
    assert returned and before == {} and after == {"agree": 1}


def test_candidate_past_its_timeout_is_candidate_error() -> None:
    async def main() -> tuple[dict[str, int], str | None]:
        s, _ = shadow(ALLOW, timeout=0.05, gate=asyncio.Event())  # the gate never opens
        await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        return classes(s), s.tally.samples()[0].candidate_error

    counted, error = asyncio.run(main())
    assert counted == {"candidate_error": 1}
    assert error == "the candidate did not answer within 0.05s"


@pytest.mark.parametrize(("candidate", "error"), [
    (OPAUnavailable("OPA answered HTTP 500: eval_builtin_error"), "OPA answered HTTP 500: eval_builtin_error"),
    (RuntimeError("boom"), "RuntimeError: boom"),
    ({}, "decision is undefined"),
])
def test_failing_or_undefined_candidate_is_candidate_error(candidate: Any, error: str) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, int], str | None]:
        s, _ = shadow(candidate)
        raw = await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await settle()
        return raw, classes(s), s.tally.samples()[0].candidate_error

    raw, counted, got = asyncio.run(main())
    assert raw == ALLOW and counted == {"candidate_error": 1} and got == error


def test_enforced_failure_is_raised_and_counted_as_not_compared() -> None:
    async def main() -> tuple[dict[str, int], bool]:
        s, _ = shadow(ALLOW, gate=asyncio.Event())
        with pytest.raises(OPAUnavailable):
            await s.query(FakeOPA({"enforced": OPAUnavailable("down")}), "enforced", INPUT, "d1",  # type: ignore[arg-type]
                          100.0)
        await settle()
        return classes(s), bool(s._in_flight)

    counted, running = asyncio.run(main())
    assert counted == {"not_compared": 1}
    assert not running  # the candidate was cancelled


def test_past_max_in_flight_candidates_are_not_queued() -> None:
    async def main() -> tuple[dict[str, int], list[str], int]:
        gate = asyncio.Event()
        s, fake = shadow(ALLOW, max_in_flight=2, gate=gate)
        enforced = FakeOPA({"enforced": ALLOW})
        for i in range(5):
            await s.query(enforced, "enforced", INPUT, f"d{i}", 100.0)  # type: ignore[arg-type]
        await settle()
        overloaded = classes(s)
        gate.set()
        await settle()
        return overloaded, [x.candidate_error or "" for x in s.tally.samples()], len(fake.calls)

    overloaded, errors, candidate_calls = asyncio.run(main())
    assert overloaded == {"candidate_error": 3}
    assert candidate_calls == 2
    assert errors[0] == "shadow overloaded: candidate not evaluated"


def test_flush_writes_the_tally_and_keeps_it_when_the_store_fails() -> None:
    async def main() -> tuple[int, int, int]:
        failing = FakeStore(fail=True)
        s, _ = shadow(ALLOW, store=failing)
        await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await settle()
        with pytest.raises(StoreError):
            await s.flush()
        kept = len(s.tally)
        failing.fail = False
        await s.flush()
        return kept, sum(c.count for c in failing.counts), len(s.tally)

    kept, written, left = asyncio.run(main())
    assert (kept, written, left) == (1, 1, 0)


def test_close_waits_for_running_candidates_then_flushes() -> None:
    async def main() -> tuple[int, bool]:
        store = FakeStore()
        gate = asyncio.Event()
        s, fake = shadow(ALLOW, store=store, gate=gate)
        await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        asyncio.get_running_loop().call_later(0.05, gate.set)
        await s.close()
        return sum(c.count for c in store.counts), fake.closed

    assert asyncio.run(main()) == (1, True)


class FakeWasmPolicy:
    """Stands in for OPAWasm: a fixed decision document, or an error, per evaluation."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.inputs: list[dict[str, Any]] = []

    def evaluate(self, input_doc: dict[str, Any]) -> Any:
        self.inputs.append(input_doc)
        if isinstance(answer := self.answer, BaseException):
            raise answer
        return answer


def test_a_wasm_candidate_is_evaluated_in_process_and_opa_is_not_asked() -> None:
    async def main() -> tuple[dict[str, int], list[str], int]:
        s, fake = shadow(DENY)
        policy = FakeWasmPolicy(ALLOW["result"])
        s.wasm = WasmCandidate(policy)  # type: ignore[arg-type]
        await s.query(FakeOPA({"enforced": DENY}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        counted = classes(s)
        await s.close()
        return counted, fake.calls, len(policy.inputs)

    counted, candidate_calls, evaluations = asyncio.run(main())
    assert counted == {"deny_to_allow": 1} and candidate_calls == [] and evaluations == 1


def test_a_wasm_candidate_that_fails_is_candidate_error_and_issuance_unchanged() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, int], str | None]:
        s, _ = shadow(ALLOW)
        s.wasm = WasmCandidate(FakeWasmPolicy(WasmPolicyError("the policy failed: sprintf: bad")))  # type: ignore[arg-type]
        raw = await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        counted, samples = classes(s), s.tally.samples()
        await s.close()
        return raw, counted, samples[0].candidate_error if samples else None

    raw, counted, error = asyncio.run(main())
    assert raw == ALLOW and counted == {"candidate_error": 1}
    assert error is not None and "sprintf: bad" in error


def test_a_candidate_dir_that_cannot_be_built_falls_back_to_opa_and_says_so_once(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> tuple[bool, dict[str, int], list[str]]:
        fake = FakeOPA({"candidate": ALLOW})
        s = LiveShadow("candidate", "http://unused", FakeStore(), CollectorRegistry(),  # type: ignore[arg-type]
                       opa=fake, candidate_dir=tmp_path, opa_bin="/nonexistent/opa")  # type: ignore[arg-type]
        await s.load_wasm()
        await s.load_wasm()  # already tried: said once
        await s.query(FakeOPA({"enforced": ALLOW}), "enforced", INPUT, "d1", 100.0)  # type: ignore[arg-type]
        await settle()
        return s.wasm is None, classes(s), fake.calls

    no_wasm, counted, calls = asyncio.run(main())
    assert no_wasm and counted == {"agree": 1} and calls == ["candidate"]
    said = [r for r in caplog.records if "shadow.wasm_unavailable" in r.getMessage()]
    assert len(said) == 1 and "/nonexistent/opa" in str(said[0].__dict__)


def test_a_wasm_candidate_is_rebuilt_when_its_files_change_and_kept_when_the_rebuild_fails(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdp.shadow import live

    (tmp_path / "candidate.rego").write_text("package c\n")
    built: list[str] = []

    def fake_build(policy_dir: Any, opa_bin: Any, path: str) -> WasmCandidate:
        text = (policy_dir / "candidate.rego").read_text()
        if "broken" in text:
            raise WasmPolicyError("the policy needs builtins the Wasm target lacks: http.send")
        built.append(text)
        return WasmCandidate(FakeWasmPolicy(ALLOW["result"]))  # type: ignore[arg-type]

    monkeypatch.setattr(live, "build_wasm_candidate", fake_build)

    async def main() -> tuple[list[str], bool]:
        s = LiveShadow("candidate", "http://unused", FakeStore(), CollectorRegistry(),  # type: ignore[arg-type]
                       opa=FakeOPA({}), candidate_dir=tmp_path)  # type: ignore[arg-type]
        await s.load_wasm()
        first = s.wasm
        await s.load_wasm()  # nothing changed: not rebuilt
        (tmp_path / "candidate.rego").write_text("package c\n\n# v2\n")
        await s.load_wasm()
        second = s.wasm
        (tmp_path / "candidate.rego").write_text("package c\n\n# broken, v3\n")
        await s.load_wasm()
        kept = s.wasm is second and second is not first
        await s.close()
        return built, kept

    built_texts, kept = asyncio.run(main())
    assert built_texts == ["package c\n", "package c\n\n# v2\n"] and kept
