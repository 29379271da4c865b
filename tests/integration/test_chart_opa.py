"""The chart's OPA container, as rendered, run by a real OPA on a directory laid out the way
the kubelet lays out a ConfigMap volume (each file reachable three times)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from jitmesh.opa_server import OPAServer
from tests.unit.test_injector_chart import REQUIRED, render

ORDERS_EXAMPLE = {
    "subject": {"sub": "system:serviceaccount:orders:api", "issuer": "https://kubernetes.default.svc.cluster.local",
                "namespace": "orders", "service_account": "api",
                "pod": {"name": "api-1", "uid": "u-1", "labels": {}, "images": ["ghcr.io/jitmesh/jitmesh:0.1.0"]}},
    "request": {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": 300},
    "context": {"time": "2026-11-23T10:00:00Z", "client_ip": "10.0.0.10"},
    "approval": None,
}


def _config_map_volume(root: Path, data: dict[str, str]) -> Path:
    stamp = root / "..2026_12_02_19_55_01.1234567"
    stamp.mkdir(parents=True)
    for name, text in data.items():
        (stamp / name).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for name in data:
        (root / name).symlink_to(f"..data/{name}")
    return root


def test_opa_as_the_chart_runs_it_loads_a_config_map_volume_once(opa_bin: str, tmp_path: Path) -> None:
    docs = render(*REQUIRED)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies"))
    broker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-broker"))
    opa = next(c for c in broker["spec"]["template"]["spec"]["containers"] if c["name"] == "opa")
    loader_flags = [a for a in opa["args"] if a.startswith("--ignore")]
    volume = _config_map_volume(tmp_path / "policies", cm["data"])
    server = OPAServer([*loader_flags, volume], tmp_path / "opa.log", opa_bin=opa_bin)
    server.start()
    try:
        req = urllib.request.Request(f"{server.url}/v1/data/jitmesh/authz/decision",
                                     data=json.dumps({"input": ORDERS_EXAMPLE}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            decision = json.load(resp)["result"]
    finally:
        server.stop()
    assert decision["allow"] is True, decision
    assert os.path.islink(volume / "authz.rego")
