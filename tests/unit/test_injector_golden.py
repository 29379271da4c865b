"""Golden cases of the webhook: each `injector_cases/<case>.pod.yaml` is an admitted object, and
beside it the expected answer: `<case>.patch.json` (the pod is injected with exactly this
JSONPatch) or `<case>.expected.yaml` (allowed unchanged or refused; `message` is a substring).
Optional inputs: `<case>.namespace.yaml` (the pod's Namespace), `<case>.config.yaml` (injector
settings), `<case>.request.yaml` (AdmissionRequest fields: operation, dry_run, sub_resource).
Adding a case is adding files. JITMESH_UPDATE_GOLDEN=1 rewrites the patch files (review the diff).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector.config import InjectorConfig
from injector.patch import Injected, Outcome, Refused, Unchanged, admit, needs_namespace_labels
from injector.review import AdmissionRequest

CASES = Path(__file__).parent / "injector_cases"
NAMES = sorted(p.name.removesuffix(".pod.yaml") for p in CASES.glob("*.pod.yaml"))
BASE_CONFIG = {"broker_url": "http://jitmesh-broker.jitmesh.svc:8080", "sidecar_image": "ghcr.io/jitmesh/jitmesh:test"}


def _load(name: str, suffix: str) -> Any:
    path = CASES / f"{name}.{suffix}"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _config(name: str) -> InjectorConfig:
    overrides = _load(name, "config.yaml") or {}
    if "default_audiences" in overrides:
        overrides["default_audiences"] = tuple(overrides["default_audiences"])
    return InjectorConfig(**{**BASE_CONFIG, **overrides})


def _request(name: str, obj: dict[str, Any]) -> AdmissionRequest:
    api_version = obj.get("apiVersion", "v1")
    group, _, version = api_version.rpartition("/")
    fields: dict[str, Any] = {
        "uid": f"uid-{name}",
        "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
        "operation": "CREATE",
        "namespace": (obj.get("metadata") or {}).get("namespace", "default"),
        "object": obj,
    }
    fields.update(_load(name, "request.yaml") or {})
    return AdmissionRequest(**fields)


def _run(name: str, obj: dict[str, Any] | None = None) -> Outcome:
    obj = obj if obj is not None else _load(name, "pod.yaml")
    request = _request(name, obj)
    namespace = _load(name, "namespace.yaml")
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    return admit(request, labels if needs_namespace_labels(request) else None, _config(name))


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `add` (all the webhook emits) on a copy of `doc`."""
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return doc


def _injected_cases() -> list[str]:
    return [n for n in NAMES if (CASES / f"{n}.patch.json").exists()]


def _sidecar_cases() -> list[str]:
    """The injected cases that get a credential sidecar (all but a proxy-only server)."""
    return [n for n in _injected_cases() if "jitmesh-sidecar" in (CASES / f"{n}.patch.json").read_text()]


def _proxy_cases() -> list[str]:
    return [n for n in _injected_cases() if "jitmesh-proxy" in (CASES / f"{n}.patch.json").read_text()]


@pytest.mark.parametrize("name", NAMES)
def test_case_answers_as_its_golden_file(name: str) -> None:
    outcome = _run(name)
    patch_file = CASES / f"{name}.patch.json"
    expected = _load(name, "expected.yaml")
    assert patch_file.exists() != (expected is not None), f"{name}: give exactly one of .patch.json, .expected.yaml"
    if patch_file.exists():
        assert isinstance(outcome, Injected), outcome
        if os.environ.get("JITMESH_UPDATE_GOLDEN") == "1":
            patch_file.write_text(json.dumps(outcome.patch, indent=2) + "\n")
        assert outcome.patch == json.loads(patch_file.read_text())
        assert list(outcome.warnings) == []
        return
    if expected["allowed"]:
        assert isinstance(outcome, Unchanged), outcome
        warnings = expected.get("warnings") or []
        assert len(outcome.warnings) == len(warnings), outcome.warnings
        for got, want in zip(outcome.warnings, warnings, strict=True):
            assert want in got
    else:
        assert isinstance(outcome, Refused), outcome
        assert expected["message"] in outcome.message
        assert outcome.code == expected.get("code", 400)


@pytest.mark.parametrize("name", _injected_cases())
def test_injected_pod_is_left_alone_when_the_webhook_is_called_again(name: str) -> None:
    outcome = _run(name)
    assert isinstance(outcome, Injected)
    patched = apply_patch(_load(name, "pod.yaml"), outcome.patch)
    again = _run(name, patched)
    assert again == Unchanged("already injected")


@pytest.mark.parametrize("name", _sidecar_cases())
def test_every_app_container_mounts_the_token_dir_read_only(name: str) -> None:
    outcome = _run(name)
    assert isinstance(outcome, Injected)
    pod = _load(name, "pod.yaml")
    patched = apply_patch(pod, outcome.patch)
    app_names = [c["name"] for c in pod["spec"]["containers"]]
    apps = [c for c in patched["spec"]["containers"] if c["name"] in app_names]
    assert len(apps) == len(app_names)
    for c in apps:
        mounts = [m for m in c["volumeMounts"] if m["name"] == "jitmesh-tokens"]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["JITMESH_TOKEN_DIR"] == mounts[0]["mountPath"]
        assert env["JITMESH_AGENT_URL"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("name", _sidecar_cases())
def test_sidecar_starts_first(name: str) -> None:
    outcome = _run(name)
    assert isinstance(outcome, Injected)
    patched = apply_patch(_load(name, "pod.yaml"), outcome.patch)
    if _config(name).native_sidecars:
        first = patched["spec"]["initContainers"][0]
        assert first["restartPolicy"] == "Always"
    else:
        first = patched["spec"]["containers"][0]
        assert "restartPolicy" not in first
    assert first["name"] == "jitmesh-sidecar"
    assert patched["metadata"]["annotations"]["jitmesh.io/status"] == "injected"


def test_dry_run_gets_the_same_patch_as_a_real_request() -> None:
    pod = _load("pod-label", "pod.yaml")
    config = _config("pod-label")
    real = admit(_request("pod-label", pod), None, config)
    dry = admit(AdmissionRequest(**{**_request("pod-label", pod).__dict__, "dry_run": True}), None, config)
    assert isinstance(real, Injected) and dry == real


def test_namespace_labels_are_not_needed_when_the_pod_label_decides() -> None:
    pod = _load("pod-label", "pod.yaml")
    assert not needs_namespace_labels(_request("pod-label", pod))
    unlabelled = _load("namespace-label", "pod.yaml")
    assert needs_namespace_labels(_request("namespace-label", unlabelled))


@pytest.mark.parametrize("name", _proxy_cases())
def test_the_proxy_guards_the_protected_port_with_the_sidecars_confinement(name: str) -> None:
    pod = _load(name, "pod.yaml")
    patched = apply_patch(pod, _run(name).patch)  # type: ignore[union-attr]
    added = patched["spec"]["initContainers"]
    [proxy] = [c for c in added if c["name"] == "jitmesh-proxy"]
    port, app_port = pod["metadata"]["annotations"]["jitmesh.io/protect"].split("=")
    args = proxy["args"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{port}"
    assert args[args.index("--upstream") + 1] == f"http://127.0.0.1:{app_port}"
    served = pod["metadata"]["annotations"]["jitmesh.io/serves"].split(",")
    assert [args[i + 1] for i, a in enumerate(args) if a == "--audience"] == served
    assert proxy["restartPolicy"] == "Always" and proxy["securityContext"]["runAsNonRoot"] is True
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    sidecars = [c for c in added if c["name"] == "jitmesh-sidecar"]
    if sidecars:
        assert proxy["securityContext"] == sidecars[0]["securityContext"]
        assert added.index(sidecars[0]) < added.index(proxy)
    assert {"name": "jitmesh-attestation", "mountPath": "/var/run/secrets/jitmesh.io/attestation",
            "readOnly": True} in proxy["volumeMounts"]


def test_a_server_that_only_receives_tokens_gets_no_credential_sidecar_nor_token_volume() -> None:
    pod = _load("protect-only", "pod.yaml")
    patched = apply_patch(pod, _run("protect-only").patch)  # type: ignore[union-attr]
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["jitmesh-proxy"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["jitmesh-attestation"]
    assert patched["spec"]["containers"] == pod["spec"]["containers"]
