"""The README's install example on the chart's defaults: namespace `orders`, audience
`orders-db`; and a denial shown where `kubectl describe pod` shows it."""

from __future__ import annotations

from tests.cluster.conftest import Kube, Release
from tests.cluster.workloads import app_container, pod

README_LABELS = {"jitmesh.io/inject": "true"}
README_ANNOTATIONS = {"jitmesh.io/audiences": "orders-db", "jitmesh.io/scopes.orders-db": "read",
                      "jitmesh.io/ttl": "300"}


def test_readme_example_pod_gets_its_orders_db_token_with_the_chart_defaults(cluster: Kube, release: Release) -> None:
    ns = cluster.namespace("orders")
    cluster.service_account(ns, "api")
    cluster.create(ns, pod("api", README_LABELS, README_ANNOTATIONS, [app_container("orders-db")], "api"))
    cluster.wait_verified(ns, "api")
    claims = cluster.app_report(ns, "api")["claims"]
    assert claims["sub"] == "system:serviceaccount:orders:api"
    assert claims["aud"] == "orders-db" and claims["scope"] == "read"


def test_denied_pod_shows_the_policy_reasons_in_kubectl_describe(cluster: Kube, release: Release) -> None:
    ns = cluster.namespace()
    cluster.create(ns, pod("denied", README_LABELS, README_ANNOTATIONS, [app_container("orders-db")]))
    reason = f'system:serviceaccount:{ns}:default has no grant for audience \\"orders-db\\"'

    def described() -> str | None:
        out = cluster.run("kubectl", "describe", "pod", "denied", "-n", ns).stdout
        return out if "no grant for audience" in out else None

    out = cluster.wait("the denial's reasons in kubectl describe pod", described, 240, ns)
    assert "jitmesh-sidecar:" in out, out
    assert reason in out or reason.replace("\\", "") in out, out
    p = cluster.pod(ns, "denied")
    assert p.status.phase == "Pending", "the app must not start without its token"
