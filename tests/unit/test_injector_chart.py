"""charts/jitmesh without a cluster: static checks always; rendering with a real helm binary
(`scripts/tools.sh helm`, JITMESH_HELM_BIN or PATH) when there is one, skipped otherwise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "jitmesh"
TEMPLATES = [*sorted((CHART / "templates").glob("*.yaml")), CHART / "templates" / "_helpers.tpl"]
_VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_OPENERS = re.compile(r"\{\{-?\s*(if|range|with|define)\b")
_ENDS = re.compile(r"\{\{-?\s*end\b")


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_metadata_is_a_helm_v2_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "jitmesh"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["type"] == "application"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_values_reference_exists_in_values_yaml(template: Path) -> None:
    values = _values()
    for ref in _VALUES_REF.findall(template.read_text()):
        node: Any = values
        for part in ref.strip(".").split("."):
            assert isinstance(node, dict) and part in node, f"{template.name}: .Values{ref} is not in values.yaml"
            node = node[part]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_actions_are_balanced(template: Path) -> None:
    text = template.read_text()
    assert text.count("{{") == text.count("}}"), f"{template.name}: unbalanced {{{{ }}}}"
    assert len(_OPENERS.findall(text)) == len(_ENDS.findall(text)), f"{template.name}: if/range/with/define vs end"


def test_shipped_policies_are_reachable_from_the_chart() -> None:
    policies = CHART / "files" / "policies"
    rego = sorted(p.name for p in policies.glob("*.rego") if not p.name.endswith("_test.rego"))
    assert rego, f"{policies} holds no policy (a copy of the repository's policies/)"


def _shipped_policy_files() -> dict[str, bytes]:
    top = REPO / "policies"
    names = [p.name for p in top.glob("*.rego") if not p.name.endswith("_test.rego")] + ["data.json"]
    return {n: (top / n).read_bytes() for n in sorted(names)}


def test_chart_holds_real_files_not_links() -> None:
    # helm warns on symbolic links in a chart, and packaging tools drop them
    links = [str(p.relative_to(CHART)) for p in [CHART, *CHART.rglob("*")] if p.is_symlink()]
    assert not links, f"symbolic links in the chart: {links}"


def test_chart_policy_copy_is_identical_to_policies() -> None:
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "files" / "policies").iterdir())}
    shipped = _shipped_policy_files()
    assert sorted(chart) == sorted(shipped), "charts/jitmesh/files/policies must hold exactly " \
        f"{sorted(shipped)}; run `make chart-policies`"
    stale = [n for n in shipped if chart[n] != shipped[n]]
    assert not stale, f"charts/jitmesh/files/policies differs from policies/ in {stale}; run `make chart-policies`"


def test_webhook_rbac_is_only_namespace_reads() -> None:
    docs = [d for d in yaml.safe_load_all(_strip_actions((CHART / "templates" / "injector-rbac.yaml").read_text()))
            if d and d.get("kind") == "ClusterRole"]
    assert docs[0]["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]


def test_broker_rbac_grants_reviews_and_pod_reads() -> None:
    docs = [d for d in yaml.safe_load_all(_strip_actions((CHART / "templates" / "broker-rbac.yaml").read_text()))
            if d and d.get("kind") == "ClusterRole"]
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in docs[0]["rules"]}
    assert rules == {("authentication.k8s.io", "tokenreviews"): ["create"],
                     ("authorization.k8s.io", "subjectaccessreviews"): ["create"],
                     ("", "pods"): ["get", "list", "watch"]}


def _strip_actions(text: str) -> str:
    """Template actions replaced by a placeholder, for files whose structure is plain YAML."""
    text = re.sub(r"^\s*\{\{-?\s*(include|toYaml)[^}]*\}\}\s*$", "", text, flags=re.M)
    return re.sub(r"\{\{[^}]*\}\}", "x", text)


def helm_bin() -> str | None:
    """JITMESH_HELM_BIN, else the pinned build of `scripts/tools.sh helm`, else helm on PATH."""
    if os.environ.get("JITMESH_HELM_BIN"):
        return os.environ["JITMESH_HELM_BIN"]
    pinned = subprocess.run([str(REPO / "scripts" / "tools.sh"), "path", "helm"], capture_output=True, text=True)
    if pinned.returncode == 0 and os.access(pinned.stdout.strip(), os.X_OK):
        return pinned.stdout.strip()
    return shutil.which("helm")


KUBE = "1.34.4"  # the kube-apiserver the integration tests run
REQUIRED = ["--set", "injector.caBundle=Y2E=", "--set", "injector.tls.crt=CRT", "--set", "injector.tls.key=KEY"]


def render(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as release `jm` in namespace `jitmesh`."""
    helm = helm_bin()
    if helm is None:
        pytest.skip("helm is not built (scripts/tools.sh helm) nor on PATH")
    out = subprocess.run([helm, "template", "jm", str(CHART), "--namespace", "jitmesh", "--kube-version", KUBE, *args],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def test_helm_lint_passes() -> None:
    helm = helm_bin()
    if helm is None:
        pytest.skip("helm is not built (scripts/tools.sh helm) nor on PATH")
    out = subprocess.run([helm, "lint", str(CHART), *REQUIRED], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_chart_has_broker_injector_and_webhook() -> None:
    kinds = sorted({d["kind"] for d in render(*REQUIRED)})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "MutatingWebhookConfiguration",
                     "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "Service",
                     "ServiceAccount"]


def test_injector_tells_sidecars_the_broker_service() -> None:
    docs = render(*REQUIRED)
    args = _one(docs, "Deployment", "jm-jitmesh-injector")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--broker-url=http://jm-jitmesh-broker.jitmesh.svc:8080" in args
    service = _one(docs, "Service", "jm-jitmesh-broker")
    assert service["spec"]["ports"][0]["port"] == 8080


def test_webhooks_select_labelled_pods_and_labelled_namespaces() -> None:
    hook = _one(render(*REQUIRED), "MutatingWebhookConfiguration", "jm-jitmesh-injector")
    by_name = {w["name"]: w for w in hook["webhooks"]}
    assert set(by_name) == {"pods.inject.jitmesh.io", "pods.namespace.jitmesh.io"}
    for w in by_name.values():
        assert w["clientConfig"]["caBundle"] == "Y2E="
        assert w["clientConfig"]["service"] == {"name": "jm-jitmesh-injector", "namespace": "jitmesh",
                                                "path": "/mutate", "port": 443}
        assert w["sideEffects"] == "None" and w["admissionReviewVersions"] == ["v1"]
        excluded = w["namespaceSelector"]["matchExpressions"][0]
        assert excluded["operator"] == "NotIn" and "jitmesh" in excluded["values"]
    assert by_name["pods.namespace.jitmesh.io"]["namespaceSelector"]["matchExpressions"][1] == {
        "key": "jitmesh.io/injection", "operator": "In", "values": ["enabled"]}


def test_policies_config_map_holds_the_shipped_policies_without_tests() -> None:
    cm = _one(render(*REQUIRED), "ConfigMap", "jm-jitmesh-broker-policies")
    assert "authz.rego" in cm["data"] and "data.json" in cm["data"]
    assert not [k for k in cm["data"] if k.endswith("_test.rego")]
    assert cm["data"]["authz.rego"] == (REPO / "policies" / "authz.rego").read_text()


def test_missing_ca_bundle_is_a_clear_render_error() -> None:
    helm = helm_bin()
    if helm is None:
        pytest.skip("helm is not built (scripts/tools.sh helm) nor on PATH")
    out = subprocess.run([helm, "template", "jm", str(CHART), "--kube-version", KUBE, "--set", "injector.tls.crt=C",
                          "--set", "injector.tls.key=K"], capture_output=True, text=True)
    assert out.returncode != 0 and "injector.caBundle is required" in out.stderr


BROKER_TLS = ["--set", "broker.tls.enabled=true", "--set", "broker.tls.crt=BCRT", "--set", "broker.tls.key=BKEY",
              "--set", "broker.tls.ca=BCA"]


def test_broker_tls_serves_https_and_gives_the_injector_only_the_ca() -> None:
    docs = render(*REQUIRED, *BROKER_TLS)
    broker = _one(docs, "Deployment", "jm-jitmesh-broker")["spec"]["template"]["spec"]
    container = broker["containers"][0]
    assert {"--tls-cert-file=/etc/jitmesh/tls/tls.crt", "--tls-key-file=/etc/jitmesh/tls/tls.key",
            "--issuer=https://jm-jitmesh-broker.jitmesh.svc:8080"} <= set(container["args"])
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "secret": {"secretName": "jm-jitmesh-broker-tls", "defaultMode": 0o400}} in broker["volumes"]
    secret = _one(docs, "Secret", "jm-jitmesh-broker-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    injector = _one(docs, "Deployment", "jm-jitmesh-injector")["spec"]["template"]["spec"]
    args = injector["containers"][0]["args"]
    assert "--broker-url=https://jm-jitmesh-broker.jitmesh.svc:8080" in args
    assert "--broker-ca-file=/etc/jitmesh/broker-ca/ca.crt" in args
    ca = next(v for v in injector["volumes"] if v["name"] == "broker-ca")
    assert ca["secret"] == {"secretName": "jm-jitmesh-broker-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}


def test_broker_stays_plain_http_unless_tls_is_enabled() -> None:
    docs = render(*REQUIRED)
    container = _one(docs, "Deployment", "jm-jitmesh-broker")["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if a.startswith("--tls-")]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not [d for d in docs if d["metadata"]["name"] == "jm-jitmesh-broker-tls"]


def test_broker_tls_without_its_certificate_is_a_clear_render_error() -> None:
    helm = helm_bin()
    if helm is None:
        pytest.skip("helm is not built (scripts/tools.sh helm) nor on PATH")
    out = subprocess.run([helm, "template", "jm", str(CHART), "--kube-version", KUBE, *REQUIRED,
                          "--set", "broker.tls.enabled=true"], capture_output=True, text=True)
    assert out.returncode != 0 and "broker.tls.crt is required" in out.stderr


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")}


def test_no_pod_the_chart_renders_gets_service_link_variables() -> None:
    pods = _pods(render(*REQUIRED, *BROKER_TLS))
    assert set(pods) == {"jm-jitmesh-broker", "jm-jitmesh-injector"}
    assert {name: spec.get("enableServiceLinks") for name, spec in pods.items()} == dict.fromkeys(pods, False)


def test_opa_skips_the_config_map_volume_links() -> None:
    spec = _pods(render(*REQUIRED))["jm-jitmesh-broker"]
    opa = next(c for c in spec["containers"] if c["name"] == "opa")
    # `..data` and `..<timestamp>` would otherwise load every policy file three times
    assert "--ignore=.*" in opa["args"] and opa["args"][-1] == "/policies"


def test_every_container_has_a_pull_policy_the_user_can_set() -> None:
    spec = _pods(render(*REQUIRED, "--set", "image.pullPolicy=Never", "--set", "broker.opa.pullPolicy=Never"))
    for name in ("jm-jitmesh-broker", "jm-jitmesh-injector"):
        assert {c["name"]: c["imagePullPolicy"] for c in spec[name]["containers"]} == \
            {c["name"]: "Never" for c in spec[name]["containers"]}


DIGEST = "sha256:" + "ab" * 32


def test_an_image_digest_pins_every_jitmesh_image_and_the_injected_sidecar() -> None:
    pods = _pods(render(*REQUIRED, "--set", f"image.digest={DIGEST}"))
    pinned = f"ghcr.io/jitmesh/jitmesh@{DIGEST}"
    assert pods["jm-jitmesh-broker"]["containers"][0]["image"] == pinned
    injector = pods["jm-jitmesh-injector"]["containers"][0]
    assert injector["image"] == pinned
    assert f"--sidecar-image={pinned}" in injector["args"]


def test_without_a_digest_the_images_are_repository_and_tag() -> None:
    injector = _pods(render(*REQUIRED))["jm-jitmesh-injector"]["containers"][0]
    assert injector["image"] == "ghcr.io/jitmesh/jitmesh:0.1.0"
    assert "--sidecar-image=ghcr.io/jitmesh/jitmesh:0.1.0" in injector["args"]


def test_default_broker_is_one_sqlite_replica_on_a_claim_replaced_not_rolled() -> None:
    docs = render(*REQUIRED)
    claim = _one(docs, "PersistentVolumeClaim", "jm-jitmesh-broker-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim["spec"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    broker = _one(docs, "Deployment", "jm-jitmesh-broker")
    assert broker["spec"]["replicas"] == 1
    assert broker["spec"]["strategy"] == {"type": "Recreate"}
    spec = broker["spec"]["template"]["spec"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "jm-jitmesh-broker-data"}}
    args = spec["containers"][0]["args"]
    assert "--store=sqlite:////var/lib/jitmesh/broker.db" in args
    assert {"name": "data", "mountPath": "/var/lib/jitmesh"} in spec["containers"][0]["volumeMounts"]


def test_an_existing_claim_holds_the_sqlite_store_instead_of_a_new_one() -> None:
    docs = render(*REQUIRED, "--set", "broker.persistence.existingClaim=mine")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    spec = _one(docs, "Deployment", "jm-jitmesh-broker")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "mine"}} in spec["volumes"]


def _render_error(*args: str) -> str:
    helm = helm_bin()
    if helm is None:
        pytest.skip("helm is not built (scripts/tools.sh helm) nor on PATH")
    out = subprocess.run([helm, "template", "jm", str(CHART), "--kube-version", KUBE, *REQUIRED, *args],
                         capture_output=True, text=True)
    assert out.returncode != 0, f"rendered although it should not:\n{out.stdout[:2000]}"
    return out.stderr


def test_sqlite_with_more_than_one_replica_is_refused_naming_postgresql() -> None:
    err = _render_error("--set", "broker.replicas=2")
    assert "broker.replicas=2 with a SQLite store" in err
    assert "broker.storeSecret" in err and "postgresql://" in err


def test_sqlite_without_its_volume_is_refused_naming_the_fix() -> None:
    err = _render_error("--set", "broker.persistence.enabled=false")
    assert "broker.persistence.enabled=false with a SQLite store" in err
    assert "broker.persistence.enabled=true" in err and "broker.storeSecret" in err


def test_postgresql_from_a_secret_allows_replicas_and_rolls_without_a_claim() -> None:
    docs = render(*REQUIRED, "--set", "broker.storeSecret=jitmesh-pg", "--set", "broker.replicas=3")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    broker = _one(docs, "Deployment", "jm-jitmesh-broker")
    assert broker["spec"]["replicas"] == 3
    assert broker["spec"]["strategy"] == {"type": "RollingUpdate"}
    container = broker["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if a.startswith("--store")]
    assert container["env"] == [{"name": "JITMESH_STORE", "valueFrom": {"secretKeyRef": {"name": "jitmesh-pg",
                                                                                          "key": "url"}}}]
    assert {"name": "data", "emptyDir": {}} in broker["spec"]["template"]["spec"]["volumes"]


def test_network_policy_admits_only_pods_and_only_on_the_broker_port() -> None:
    policy = _one(render(*REQUIRED, "--set", "broker.port=9000"), "NetworkPolicy", "jm-jitmesh-broker")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "jm",
                                                             "app.kubernetes.io/component": "broker"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"namespaceSelector": {}, "podSelector": {}}],
                                          "ports": [{"protocol": "TCP", "port": 9000}]}]


def test_broker_cluster_role_is_the_only_cluster_wide_grant_and_reads_only_pods() -> None:
    roles = [d for d in render(*REQUIRED) if d["kind"] == "ClusterRole"]
    broker = _one(roles, "ClusterRole", "jm-jitmesh-broker")
    reads = [r for r in broker["rules"] if set(r["verbs"]) & {"get", "list", "watch"}]
    assert reads == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    writes = [r for r in broker["rules"] if r not in reads]
    assert all(r["verbs"] == ["create"] for r in writes)
    assert sorted(r["resources"][0] for r in writes) == ["subjectaccessreviews", "tokenreviews"]
    assert not [d for d in render(*REQUIRED) if d["kind"] in ("Role", "RoleBinding")]


ORDERS_DB = {"kind": "postgresql", "admin_dsn_file": "/etc/jitmesh/db-admin/orders-db-admin/dsn",
             "host": "orders-db.orders.svc", "dbname": "orders",
             "tls": {"mode": "verify-full", "root_cert_file": "/etc/jitmesh/db-admin/orders-db-admin/ca.crt"},
             "scopes": {"read": ["orders_read"]}, "connection_limit": 5, "owner": "orders_owner"}


def _database_values(tmp_path: Path, target: dict[str, Any], secrets: list[str]) -> list[str]:
    values = tmp_path / "databases.yaml"
    values.write_text(yaml.safe_dump({"broker": {"databases": {"targets": {"orders-db": target},
                                                               "adminSecrets": secrets}}}))
    return ["-f", str(values)]


def test_database_targets_become_the_brokers_targets_file_with_admin_dsns_from_mounted_secrets(
        tmp_path: Path) -> None:
    docs = render(*REQUIRED, *_database_values(tmp_path, ORDERS_DB, ["orders-db-admin"]))
    targets = _one(docs, "ConfigMap", "jm-jitmesh-broker-targets")
    assert yaml.safe_load(targets["data"]["targets.yaml"]) == {"targets": {"orders-db": ORDERS_DB}}
    pod = _pods(docs)["jm-jitmesh-broker"]
    broker = next(c for c in pod["containers"] if c["name"] == "broker")
    assert "--targets-file=/etc/jitmesh/targets/targets.yaml" in broker["args"]
    mounts = {m["mountPath"]: m for m in broker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/jitmesh/targets"]["name"]]["configMap"]["name"] == "jm-jitmesh-broker-targets"
    secret = mounts["/etc/jitmesh/db-admin/orders-db-admin"]
    assert secret["readOnly"] is True
    assert volumes[secret["name"]]["secret"] == {"secretName": "orders-db-admin", "defaultMode": 0o400}


def test_without_database_targets_the_broker_gets_no_targets_file() -> None:
    docs = render(*REQUIRED)
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-targets")]
    broker = next(c for c in _pods(docs)["jm-jitmesh-broker"]["containers"] if c["name"] == "broker")
    assert not [a for a in broker["args"] if a.startswith("--targets-file")]


def test_an_admin_dsn_file_in_no_mounted_secret_is_a_clear_render_error(tmp_path: Path) -> None:
    error = _render_error(*_database_values(tmp_path, ORDERS_DB, ["other-secret"]))
    assert "broker.databases.targets.orders-db.admin_dsn_file" in error
    assert "broker.databases.adminSecrets" in error


def test_broker_builds_the_access_policy_from_the_policies_config_map_with_the_opa_in_its_image() -> None:
    spec = _pods(render(*REQUIRED))["jm-jitmesh-broker"]
    broker = next(c for c in spec["containers"] if c["name"] == "broker")
    assert "--access-policy-dir=/etc/jitmesh/policies" in broker["args"]
    assert "--opa-bin=/usr/local/bin/opa" in broker["args"]
    mounts = {m["name"]: m for m in broker["volumeMounts"]}
    assert mounts["policies"] == {"name": "policies", "mountPath": "/etc/jitmesh/policies", "readOnly": True}
    cm = _one(render(*REQUIRED), "ConfigMap", "jm-jitmesh-broker-policies")
    assert cm["data"]["access.rego"] == (REPO / "policies" / "access.rego").read_text()


def test_broker_serves_no_access_policy_when_it_is_turned_off() -> None:
    spec = _pods(render(*REQUIRED, "--set", "broker.accessPolicy.enabled=false"))["jm-jitmesh-broker"]
    broker = next(c for c in spec["containers"] if c["name"] == "broker")
    assert not [a for a in broker["args"] if a.startswith(("--access-policy-dir", "--opa-bin"))]
    assert "policies" not in {m["name"] for m in broker["volumeMounts"]}
