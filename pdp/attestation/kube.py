"""Attestation through the API server: TokenReview, and the pod a token is bound to read
with the Kubernetes client (`--attestation tokenreview`, `--pod-lookup`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt

from jitmesh.contract import SERVICEACCOUNT_SUB_PREFIX
from jitmesh.log import get_logger
from pdp.attestation.identity import AttestationError, AttestationUnavailable, PodInfo, PodReader, Subject
from pdp.attestation.verify import POD_NAME_EXTRA, POD_UID_EXTRA, bind_pod

log = get_logger("pdp.attestation")


def load_kube_api_client(kubeconfig: Path | None) -> Any:
    """A kubernetes ApiClient from a kubeconfig, or the in-cluster configuration."""
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


def _api_unavailable(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    return not isinstance(exc, ApiException) or exc.status is None or exc.status >= 500 or exc.status == 429


class KubePodReader:
    """Reads pods through the API server; answers are cached for `ttl` seconds."""

    def __init__(self, api_client: Any, ttl: float = 5.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, PodInfo | None]] = {}

    def _read(self, namespace: str, name: str) -> PodInfo | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod: Any = self._core.read_namespaced_pod(name, namespace, _request_timeout=3)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = pod.spec
        images = [c.image for c in (spec.init_containers or []) + (spec.containers or []) if c.image]
        return PodInfo(name=pod.metadata.name, uid=pod.metadata.uid,
                       labels=dict(pod.metadata.labels or {}), images=tuple(images))

    async def read_pod(self, namespace: str, name: str) -> PodInfo | None:
        key = (namespace, name)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            info = await asyncio.to_thread(self._read, namespace, name)
        except Exception as exc:
            if _api_unavailable(exc):
                raise AttestationUnavailable(f"cannot read pod {namespace}/{name}: {exc}") from None
            raise AttestationError(f"cannot read pod {namespace}/{name}: {exc}") from None
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now, info)
        return info


def subject_from_token_review(status: Any, token: str, audience: str) -> Subject:
    """The identity of an authenticated TokenReview status (user, extra, audiences)."""
    if not getattr(status, "authenticated", False):
        raise AttestationError(f"TokenReview did not authenticate the subject token: "
                               f"{getattr(status, 'error', None) or 'not authenticated'}")
    audiences = getattr(status, "audiences", None) or []
    if audience not in audiences:
        raise AttestationError(f"TokenReview audiences {audiences} do not include {audience!r}")
    user = status.user
    username = getattr(user, "username", None) or ""
    if not username.startswith(SERVICEACCOUNT_SUB_PREFIX) or username.count(":") != 3:
        raise AttestationError(f"subject {username!r:.100} is not a ServiceAccount")
    namespace, sa_name = username[len(SERVICEACCOUNT_SUB_PREFIX):].split(":")
    extra = getattr(user, "extra", None) or {}
    pod_names, pod_uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    pod = PodInfo(name=pod_names[0], uid=pod_uids[0]) if pod_names and pod_uids else None
    try:
        issuer = str(jwt.decode(token, options={"verify_signature": False}).get("iss", ""))
    except jwt.PyJWTError:
        issuer = ""
    return Subject(sub=username, issuer=issuer, namespace=namespace, service_account=sa_name, pod=pod)


class TokenReviewAttestor:
    """Asks the API server (TokenReview, with the broker's subject audience)."""

    def __init__(self, api_client: Any, audience: str, pods: PodReader | None = None) -> None:
        from kubernetes import client

        self._auth = client.AuthenticationV1Api(api_client)
        self.audience = audience
        self.pods = pods

    def _review(self, token: str) -> Any:
        from kubernetes import client

        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        return self._auth.create_token_review(body, _request_timeout=3).status

    async def attest(self, token: str) -> Subject:
        try:
            status = await asyncio.to_thread(self._review, token)
        except Exception as exc:
            if _api_unavailable(exc):
                raise AttestationUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
            raise AttestationError(f"TokenReview refused: {exc}") from None
        return await bind_pod(subject_from_token_review(status, token, self.audience), self.pods)

    async def close(self) -> None:
        return None
