"""Live shadowing in the broker: the candidate policy is asked at the same time as the
enforced one, and its answer is compared after the response is on its way.

The hot path pays for one task creation. The candidate query runs on a connection pool
of its own (a slow candidate cannot take the enforced query's connections), with its own
timeout, and at most `max_in_flight` at once (past that a request is counted as
`candidate_error` "shadow overloaded" instead of queueing more work on OPA). The request
never waits for it: `query()` returns as soon as the enforced answer is in; the
comparison is made in a done-callback and folded into an in-memory tally that a
background task writes to the store every `flush_interval` seconds.

With a candidate directory (`--shadow-policy-dir`), the candidate is built by the pinned OPA
as Wasm when the background task starts, and again when its files change, and evaluated
in-process on a thread of its own, so no candidate query crosses to OPA: the module's heap
is single-threaded, and the thread keeps its work off the event loop. Until a build is done,
or while none could be (said once per change of the files), the candidate is asked of OPA's
REST API as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from jitmesh.log import get_logger
from jitmesh.opa_server import OPANotFound, find_opa
from jitmesh.opa_wasm import (
    Fingerprint,
    OPABuildFailed,
    OPAWasm,
    WasmPolicyError,
    build_wasm_bundle,
    bundle_parts,
    policy_fingerprint,
)
from pdp.opa import OPAClient, OPAUnavailable
from pdp.shadow.classify import DEFAULT_SAMPLES_PER_CLASS, SHADOW_CLASSES, Comparison, ShadowTally, compare
from pdp.shadow.report import DEFAULT_TOP_K, build_report
from pdp.store.base import Store, StoreError
from pdp.store.shadow import RETENTION_SECONDS

log = get_logger("pdp.shadow")

CANDIDATE_TIMEOUT: Final = 1.0      # seconds a candidate may take before it counts as candidate_error
MAX_IN_FLIGHT: Final = 64           # candidate queries running at once
FLUSH_INTERVAL: Final = 2.0         # seconds between writes of the tally to the store
PRUNE_INTERVAL: Final = 3600.0


class WasmCandidate:
    """The candidate's Wasm module, evaluated on one thread of its own (its heap is not shared)."""

    def __init__(self, policy: OPAWasm) -> None:
        self._policy = policy
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-wasm")

    async def evaluate(self, policy_input: dict[str, Any]) -> Any:
        """The candidate's decision document, None when undefined; WasmPolicyError when it fails."""
        return await asyncio.wrap_future(self._thread.submit(self._policy.evaluate, policy_input))

    def close(self, *, cancel: bool = True) -> None:
        """Stop the thread once its queue is done (cancel=False) or at once."""
        self._thread.shutdown(wait=False, cancel_futures=cancel)


def build_wasm_candidate(policy_dir: Path, opa_bin: str | None, candidate_path: str) -> WasmCandidate:
    """`candidate_path` of `policy_dir` built by OPA as Wasm and loaded; OPABuildFailed or
    WasmPolicyError naming why not."""
    try:
        found = find_opa(opa_bin)
    except OPANotFound as exc:
        raise OPABuildFailed(str(exc)) from None
    wasm, data = bundle_parts(build_wasm_bundle(found, policy_dir, candidate_path))
    return WasmCandidate(OPAWasm(wasm, data, candidate_path))


class LiveShadow:
    def __init__(self, candidate_path: str, opa_url: str, store: Store, registry: CollectorRegistry, *,
                 timeout: float = CANDIDATE_TIMEOUT, max_in_flight: int = MAX_IN_FLIGHT,
                 samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS, opa: OPAClient | None = None,
                 clock: Callable[[], float] = time.time, candidate_dir: Path | None = None,
                 opa_bin: str | None = None) -> None:
        self.candidate_path = candidate_path
        self.candidate_dir = candidate_dir
        self.opa_bin = opa_bin
        self.wasm: WasmCandidate | None = None  # set once the candidate is built, by run()
        self._wasm_files: Fingerprint | None = None  # the candidate directory's files last built (or tried)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.store = store
        self.clock = clock
        self.tally = ShadowTally(samples_per_class)
        # the deadline is asyncio.timeout in _ask_candidate; the client's own sits past it so one clock decides
        self.opa = opa or OPAClient(opa_url, timeout=timeout + 0.5, max_connections=max_in_flight)
        self.comparisons = Counter("jitmesh_shadow_comparisons", "Shadow comparisons of the candidate policy, by class",
                                   ["class"], registry=registry)
        for c in SHADOW_CLASSES:
            self.comparisons.labels(c)  # every class is exported from the start, at 0
        self._in_flight: set[asyncio.Task[tuple[Any, str | None]]] = set()
        self._last_prune = 0.0

    # --- the hot path ----------------------------------------------------------------------

    async def query(self, enforced_opa: OPAClient, policy_path: str, policy_input: dict[str, Any],
                    decision_id: str, now: float) -> dict[str, Any]:
        """`enforced_opa.query(policy_path, policy_input)`, with the candidate asked beside it.
        Returns or raises exactly what the enforced query does."""
        candidate = self._start_candidate(policy_input)
        try:
            raw = await enforced_opa.query(policy_path, policy_input)
        except BaseException:
            self._not_compared(candidate, policy_input, now)
            raise
        if candidate is None:
            self._record(compare(decision_id=decision_id, time=now, policy_input=policy_input,
                                 enforced_decision=raw.get("result"), candidate_decision=None,
                                 candidate_error="shadow overloaded: candidate not evaluated"))
        else:
            candidate.add_done_callback(
                lambda task: self._compare(task, decision_id, now, policy_input, raw.get("result")))
        return raw

    def _start_candidate(self, policy_input: dict[str, Any]) -> asyncio.Task[tuple[Any, str | None]] | None:
        if len(self._in_flight) >= self.max_in_flight:
            return None
        task = asyncio.create_task(self._ask_candidate(policy_input))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _ask_candidate(self, policy_input: dict[str, Any]) -> tuple[Any, str | None]:
        """(the candidate's decision document or None when undefined, an error or None)."""
        wasm = self.wasm
        try:
            async with asyncio.timeout(self.timeout):  # unlike wait_for, no second task per request
                if wasm is not None:
                    return await wasm.evaluate(policy_input), None
                raw = await self.opa.query(self.candidate_path, policy_input)
        except TimeoutError:
            return None, f"the candidate did not answer within {self.timeout:g}s"
        except (OPAUnavailable, WasmPolicyError) as exc:
            return None, str(exc)
        except Exception as exc:  # whatever happens to the candidate, issuance must not notice
            return None, f"{type(exc).__name__}: {exc}"
        return raw.get("result"), None

    def _compare(self, task: asyncio.Task[tuple[Any, str | None]], decision_id: str, now: float,
                 policy_input: Mapping[str, Any], enforced: Any) -> None:
        decision: Any = None
        error: str | None = "the candidate query was cancelled (broker stopping)"
        if not task.cancelled():
            decision, error = task.result()
        try:
            self._record(compare(decision_id=decision_id, time=now, policy_input=policy_input,
                                 enforced_decision=enforced, candidate_decision=decision, candidate_error=error))
        except Exception:  # a callback must not raise into the event loop; count nothing rather than crash
            log.error("shadow.compare_failed", exc_info=True, decision_id=decision_id)

    def _record(self, c: Comparison) -> None:
        self.tally.add(c)
        self.comparisons.labels(c.shadow_class).inc()
        if c.shadow_class == "deny_to_allow":
            log.warning("shadow.deny_to_allow", decision_id=c.decision_id, subject=c.subject, audience=c.audience,
                        candidate_path=self.candidate_path)

    def _not_compared(self, candidate: asyncio.Task[Any] | None, policy_input: Mapping[str, Any],
                      now: float) -> None:
        subject = policy_input.get("subject") or {}
        request = policy_input.get("request") or {}
        self.tally.add_not_compared(now, str(subject.get("sub", "")), str(request.get("audience", "")))
        if candidate is not None:
            candidate.cancel()

    # --- background ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what was tallied since the last flush; on a store error keep it for the next."""
        counts, samples = self.tally.drain()
        if counts:
            try:
                await self.store.record_shadow(counts, samples, self.tally.samples_per_class)
            except StoreError:
                self.tally.restore(counts, samples)
                raise
        now = self.clock()
        if now - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = now
            await self.store.prune_shadow(now - RETENTION_SECONDS)

    async def load_wasm(self) -> None:
        """Build the candidate directory as Wasm, when its files changed since the last try, and
        evaluate that in-process from now on. A build that fails is said once per change of the
        files; the module built before stays in force, or, with none, OPA's REST API is asked."""
        if self.candidate_dir is None:
            return
        current = await asyncio.to_thread(policy_fingerprint, self.candidate_dir)
        if current == self._wasm_files:
            return
        self._wasm_files = current
        try:
            built = await asyncio.to_thread(build_wasm_candidate, self.candidate_dir, self.opa_bin,
                                            self.candidate_path)
        except (OPABuildFailed, WasmPolicyError, ValueError) as exc:
            log.warning("shadow.wasm_unavailable", candidate_path=self.candidate_path,
                        candidate_dir=str(self.candidate_dir), error=str(exc)[:1000],
                        fallback="the module built before" if self.wasm else "the candidate is asked of OPA's REST API")
            return
        replaced, self.wasm = self.wasm, built
        if replaced is not None:
            replaced.close(cancel=False)  # what it was given still gets its answer
        log.info("shadow.wasm_loaded", candidate_path=self.candidate_path, candidate_dir=str(self.candidate_dir),
                 replaced=replaced is not None)

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        await self.load_wasm()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load_wasm()  # rebuilt when the candidate's files changed
            except Exception:  # one bad look must not end the flushes
                log.error("shadow.wasm_check_failed", candidate_dir=str(self.candidate_dir), exc_info=True)
            try:
                await self.flush()
            except StoreError as exc:
                log.warning("shadow.flush_failed", error=str(exc), pending_rows=len(self.tally))

    async def close(self) -> None:
        """Let running candidate queries finish (they are bounded by the timeout), then flush."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=self.timeout + 0.5)
        with contextlib.suppress(StoreError):
            await self.flush()
        await self.opa.close()
        if self.wasm is not None:
            self.wasm.close()


async def live_report(store: Store, shadow: LiveShadow | None, *, since: float | None, until: float | None,
                      now: float, enforced_policy: str, candidate_policy: str | None, top_k: int = DEFAULT_TOP_K,
                      samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS) -> dict[str, Any]:
    """The report of `GET /v1/admin/shadow/report`: this replica's latest comparisons are
    flushed first, then the window is read from the store (all replicas sharing it)."""
    if shadow is not None:
        await shadow.flush()
    end = now if until is None else until
    counts = await store.shadow_counts(since, end)
    samples = await store.shadow_samples(since, end, samples_per_class)
    return build_report(counts, samples, source="live", since=since, until=end, enforced_policy=enforced_policy,
                        candidate_policy=candidate_policy, top_k=top_k, samples_per_class=samples_per_class)
