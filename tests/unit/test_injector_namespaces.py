"""Namespace labels through the API, with a fake CoreV1Api: cached briefly, failures not cached."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from injector.namespaces import KubeNamespaceLabels, NamespaceUnavailable


class FakeCore:
    def __init__(self) -> None:
        self.labels: dict[str, dict[str, str]] = {"batch": {"jitmesh.io/injection": "enabled"}}
        self.reads = 0
        self.fail: Exception | None = None

    def read_namespace(self, name: str, **kwargs: Any) -> client.V1Namespace:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        if name not in self.labels:
            raise ApiException(status=404, reason="Not Found")
        return client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=self.labels[name]))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_labels_are_reused_within_the_ttl_and_read_again_after() -> None:
    core, clock = FakeCore(), Clock()
    ns = KubeNamespaceLabels(core, ttl=5, clock=clock)
    assert ns.labels("batch") == {"jitmesh.io/injection": "enabled"}
    core.labels["batch"] = {}
    clock.now += 4
    assert ns.labels("batch") == {"jitmesh.io/injection": "enabled"} and core.reads == 1
    clock.now += 2
    assert ns.labels("batch") == {} and core.reads == 2


def test_missing_namespace_counts_as_unlabelled() -> None:
    assert KubeNamespaceLabels(FakeCore()).labels("gone") == {}


@pytest.mark.parametrize(("error", "says"), [
    (ApiException(status=403, reason="Forbidden"), "HTTP 403 Forbidden"),
    (ConnectionRefusedError(), "ConnectionRefusedError"),
])
def test_unreadable_namespace_raises_and_is_not_cached(error: Exception, says: str) -> None:
    core = FakeCore()
    ns = KubeNamespaceLabels(core, ttl=60)
    core.fail = error
    with pytest.raises(NamespaceUnavailable, match=says):
        ns.labels("batch")
    core.fail = None
    assert ns.labels("batch") == {"jitmesh.io/injection": "enabled"}
