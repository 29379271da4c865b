"""charts/jitmesh: what can be checked without a cluster. `helm template` runs only when a helm
binary is on PATH (it is not installed here, and is not faked)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "jitmesh"
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
    assert rego, f"{policies} holds no policy (it links to the repository's policies/)"


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


@pytest.mark.skipif(shutil.which("helm") is None, reason="helm is not installed")
def test_helm_template_renders_valid_manifests(tmp_path: Path) -> None:
    out = subprocess.run(
        ["helm", "template", "jm", str(CHART), "--namespace", "jitmesh",
         "--set", "injector.caBundle=Y2E=", "--set", "injector.tls.crt=crt", "--set", "injector.tls.key=key"],
        capture_output=True, text=True, check=True).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    for kind in ("ClusterRole", "ConfigMap", "Deployment", "MutatingWebhookConfiguration", "Secret", "Service",
                 "ServiceAccount"):
        assert kind in kinds
