"""Namespace labels, which the AdmissionReview does not carry: read through the API, cached briefly.

When a namespace cannot be read, the caller refuses the pod (fail closed): admitting it
unchanged would start, without credentials, a workload whose namespace may have opted in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from jitmesh import log as jlog

log = jlog.get_logger("injector")

REQUEST_TIMEOUT_SECONDS = 2.0


class NamespaceUnavailable(RuntimeError):
    """The namespace's labels could not be read; the message says why."""


class NamespaceLabels(Protocol):
    def labels(self, namespace: str) -> Mapping[str, str]: ...


class NamespaceReader(Protocol):
    """What is used of `kubernetes.client.CoreV1Api`."""

    @property
    def read_namespace(self) -> Callable[..., Any]: ...


class KubeNamespaceLabels:
    """Reads `GET /api/v1/namespaces/{name}` (a `client.CoreV1Api`); answers are kept for `ttl` seconds."""

    def __init__(self, core: NamespaceReader, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._core = core
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Mapping[str, str]]] = {}
        self._lock = threading.Lock()

    def labels(self, namespace: str) -> Mapping[str, str]:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(namespace)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            ns = self._core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            labels: Mapping[str, str] = dict((ns.metadata.labels if ns.metadata else None) or {})
        except ApiException as exc:
            if exc.status == 404:
                labels = {}  # the API server refuses the pod itself: its namespace does not exist
            else:
                raise NamespaceUnavailable(f"reading namespace {namespace!r} failed: HTTP {exc.status} "
                                           f"{exc.reason}") from None
        except Exception as exc:  # urllib3 connection and timeout errors
            raise NamespaceUnavailable(f"reading namespace {namespace!r} failed: {type(exc).__name__}") from None
        with self._lock:
            self._cache[namespace] = (now, labels)
        return labels


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    """From `--kubeconfig`, else the pod's in-cluster ServiceAccount."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)
