"""Pods that are deleted lose their tokens.

When the broker has a Kubernetes client, it remembers every pod it issued a token to
(namespace, name, uid; also read back from the audit trail at start, for tokens issued
before a restart) and watches those pods' namespaces through the API server. When a
remembered pod is deleted (the watch's DELETED event, or the pod missing from the list
taken whenever a watch starts, so a deletion while not watching is caught too), the
broker revokes its pod uid, as actor `system:podwatch`. The revocation's id is derived
from the uid, so replicas that both saw the deletion store it once.

A pod is forgotten once the last token issued to it has expired; a namespace is no longer
watched once it has no remembered pod. The kubernetes client is synchronous: each
namespace is watched by a daemon thread, with a server-side timeout so it notices when
it should stop, handing events to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jitmesh.log import get_logger

log = get_logger("pdp.podwatch")

ACTOR = "system:podwatch"
WATCH_TIMEOUT_SECONDS = 20
RETRY_SECONDS = 1.0
REVOKE_ATTEMPTS = 60  # a store down for a minute: give up, the tokens expire by themselves


def revocation_id(pod_uid: str) -> str:
    return f"pod-deleted-{pod_uid}"


@dataclass
class IssuedPod:
    namespace: str
    name: str
    uid: str
    until: float  # unix time the last token issued to it expires


Revoke = Callable[[IssuedPod], Awaitable[None]]


class PodWatch:
    def __init__(self, api_client: Any, revoke: Revoke, clock: Callable[[], float] = time.time) -> None:
        self.api_client = api_client
        self.revoke = revoke
        self.clock = clock
        self.pods: dict[str, IssuedPod] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: asyncio.Queue[str] = asyncio.Queue()

    # --- what the issuance path tells us ------------------------------------------------
    def issued(self, namespace: str, name: str, uid: str, until: float) -> None:
        known = self.pods.get(uid)
        if known is not None:
            known.until = max(known.until, until)
        else:
            self.pods[uid] = IssuedPod(namespace, name, uid, until)
        self._ensure_watch(namespace)

    def watched_namespaces(self) -> list[str]:
        return sorted(ns for ns, t in self._threads.items() if t.is_alive())

    # --- the watches ------------------------------------------------------------------------
    def _ensure_watch(self, namespace: str) -> None:
        thread = self._threads.get(namespace)
        if self._loop is None or (thread is not None and thread.is_alive()):
            return
        thread = threading.Thread(target=self._watch_namespace, args=(namespace,), daemon=True,
                                  name=f"podwatch:{namespace}")
        self._threads[namespace] = thread
        thread.start()

    def _tracked_in(self, namespace: str) -> set[str]:
        return {p.uid for p in list(self.pods.values()) if p.namespace == namespace}

    def _report_gone(self, uid: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._gone.put_nowait, uid)

    def _watch_namespace(self, namespace: str) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api_client)
        failures = 0
        while not self._stop.is_set():
            tracked = self._tracked_in(namespace)
            if not tracked:
                return  # nothing left to watch here; issuance starts a new watch
            try:
                listing: Any = core.list_namespaced_pod(namespace, _request_timeout=10)
                present = {p.metadata.uid for p in listing.items}
                for uid in tracked - present:
                    self._report_gone(uid)  # deleted while nobody was watching
                w = watch.Watch()
                for event in w.stream(core.list_namespaced_pod, namespace,
                                      resource_version=listing.metadata.resource_version,
                                      timeout_seconds=WATCH_TIMEOUT_SECONDS,
                                      _request_timeout=WATCH_TIMEOUT_SECONDS + 10):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event.get("object")
                    gone = getattr(getattr(obj, "metadata", None), "uid", None)
                    if event.get("type") == "DELETED" and gone:
                        self._report_gone(str(gone))
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("podwatch.watch_failed", namespace=namespace, failures=failures,
                            error=f"{type(exc).__name__}: {exc}"[:300])
                self._stop.wait(min(30.0, RETRY_SECONDS * 2 ** min(failures - 1, 5)))

    # --- the loop on the broker's event loop -------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for ns in {p.namespace for p in self.pods.values()}:
            self._ensure_watch(ns)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    uid = await asyncio.wait_for(self._gone.get(), timeout=30.0)
                    await self._pod_gone(uid)
                self._forget_expired()
        finally:
            self._stop.set()

    async def _pod_gone(self, uid: str) -> None:
        pod = self.pods.get(uid)
        if pod is None:
            return
        for attempt in range(1, REVOKE_ATTEMPTS + 1):
            try:
                await self.revoke(pod)
                break
            except Exception as exc:
                log.warning("podwatch.revoke_failed", pod_uid=uid, attempt=attempt, error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
        else:
            log.error("podwatch.gave_up", pod_uid=uid, namespace=pod.namespace, pod=pod.name,
                      detail="the pod's tokens stay valid until they expire")
        self.pods.pop(uid, None)

    def _forget_expired(self) -> None:
        now = self.clock()
        for uid, pod in list(self.pods.items()):
            if pod.until < now:
                del self.pods[uid]
