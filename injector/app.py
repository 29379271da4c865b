"""The webhook's HTTP routes: parse the AdmissionReview, call `patch.admit`, render the answer."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from injector import review
from injector.config import InjectorConfig
from injector.metrics import InjectorMetrics
from injector.namespaces import NamespaceLabels, NamespaceUnavailable
from injector.patch import Injected, Refused, Unchanged, admit, needs_namespace_labels
from jitmesh import log as jlog

log = jlog.get_logger("injector")


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: InjectorConfig, namespaces: NamespaceLabels,
               metrics: InjectorMetrics | None = None) -> Starlette:
    metrics = metrics or InjectorMetrics()

    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _read_body(request, review.MAX_BODY_BYTES)
            adm = review.parse(body)
        except BodyTooLarge:
            return _bad_request(metrics, started, f"request body exceeds {review.MAX_BODY_BYTES} bytes")
        except review.ReviewError as exc:
            return _bad_request(metrics, started, str(exc))

        labels = None
        outcome_name: str
        answer: dict[str, Any]
        if needs_namespace_labels(adm):
            try:
                labels = await run_in_threadpool(namespaces.labels, adm.namespace)
            except NamespaceUnavailable as exc:
                message = (f"jitmesh injection cannot decide: the labels of namespace {adm.namespace!r} are "
                           f"needed and could not be read ({exc}); retry, or label the pod "
                           'jitmesh.io/inject="true" or "false"')
                answer = review.refused(adm.uid, message, 503, "ServiceUnavailable")
                _log(adm, "namespace_unavailable", message)
                metrics.observe("namespace_unavailable", time.perf_counter() - started)
                return JSONResponse(answer)

        # Dry-run requests get the same answer: the webhook has no side effects
        # (sideEffects: None), and `--dry-run=server` should show what would be stored.
        outcome = admit(adm, labels, config)
        if isinstance(outcome, Injected):
            outcome_name, answer = "injected", review.allowed(adm.uid, outcome.patch, outcome.warnings)
            _log(adm, outcome_name, "injected", outcome.warnings)
        elif isinstance(outcome, Refused):
            outcome_name = "refused"
            answer = review.refused(adm.uid, outcome.message, outcome.code, outcome.reason)
            _log(adm, outcome_name, outcome.message)
        else:
            assert isinstance(outcome, Unchanged)
            outcome_name, answer = "unchanged", review.allowed(adm.uid, None, outcome.warnings)
            _log(adm, outcome_name, outcome.reason, outcome.warnings)
        metrics.observe(outcome_name, time.perf_counter() - started)
        return JSONResponse(answer)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        return JSONResponse({"status": "ready"})

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/mutate", mutate, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ])


def _bad_request(metrics: InjectorMetrics, started: float, message: str) -> Response:
    log.warning("admission.bad_request", error=message)
    metrics.observe("bad_request", time.perf_counter() - started)
    return JSONResponse({"error": "invalid_request", "error_description": message}, status_code=400)


def _log(adm: review.AdmissionRequest, outcome: str, reason: str, warnings: tuple[str, ...] = ()) -> None:
    meta = adm.object.get("metadata") or {} if isinstance(adm.object, dict) else {}
    log.info("admission", uid=adm.uid, kind=adm.kind.get("kind"), operation=adm.operation,
             namespace=adm.namespace, name=meta.get("name") or meta.get("generateName") or adm.name,
             outcome=outcome, reason=reason, dry_run=adm.dry_run, warnings=list(warnings) or None)
