"""AdmissionReview `admission.k8s.io/v1`: the request we read and the response we render."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
MAX_BODY_BYTES = 4 * 1024 * 1024  # kube-apiserver caps objects at 3 MiB; the review wraps one


class ReviewError(ValueError):
    """The body is not an AdmissionReview we can answer; the message says what is wrong."""


@dataclass(frozen=True)
class AdmissionRequest:
    uid: str
    kind: dict[str, str]
    operation: str
    namespace: str
    object: Any
    sub_resource: str = ""
    dry_run: bool = False
    name: str = ""


def parse(body: bytes) -> AdmissionRequest:
    if len(body) > MAX_BODY_BYTES:
        raise ReviewError(f"request body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReviewError(f"request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReviewError("request body must be a JSON object (an AdmissionReview)")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ReviewError(f"expected apiVersion {API_VERSION!r} and kind {KIND!r}, got "
                          f"{doc.get('apiVersion')!r} and {doc.get('kind')!r}; set admissionReviewVersions "
                          "to [\"v1\"] in the webhook configuration")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise ReviewError("AdmissionReview has no 'request' object")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("AdmissionReview request.uid is missing; it must be echoed in the response")
    kind = req.get("kind")
    if not isinstance(kind, dict) or not all(isinstance(v, str) for v in kind.values()):
        raise ReviewError("AdmissionReview request.kind must be an object of group, version and kind")
    operation = req.get("operation")
    if not isinstance(operation, str):
        raise ReviewError("AdmissionReview request.operation must be a string such as CREATE")
    return AdmissionRequest(
        uid=uid,
        kind=kind,
        operation=operation,
        namespace=_str(req.get("namespace")),
        object=req.get("object"),
        sub_resource=_str(req.get("subResource")),
        dry_run=req.get("dryRun") is True,
        name=_str(req.get("name")),
    )


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def allowed(uid: str, patch: list[dict[str, Any]] | None = None, warnings: tuple[str, ...] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def refused(uid: str, message: str, code: int, reason: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": {
        "uid": uid, "allowed": False,
        "status": {"status": "Failure", "message": message, "code": code, "reason": reason},
    }}
