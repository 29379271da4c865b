"""The access proxy container (`jitmesh.io/protect`, docs/contract.md §7): in front of the app's
port, with the sidecar's confinement, authenticating to the broker with the pod's projected
ServiceAccount token."""

from __future__ import annotations

from typing import Any

from injector.annotations import ProxyRequest
from injector.config import PROXY_METRICS_PORT, InjectorConfig
from injector.container_sidecar import confinement, container_resources
from injector.volumes import ATTESTATION_MOUNT_PATH, attestation_token_file
from jitmesh.contract import ATTESTATION_VOLUME, ENV_BROKER_CA, PROXY_CONTAINER_NAME

__all__ = ["PROXY_METRICS_PORT", "proxy_container"]


def proxy_container(want: ProxyRequest, config: InjectorConfig) -> dict[str, Any]:
    args = ["--listen", f"0.0.0.0:{want.port}", "--upstream", f"http://127.0.0.1:{want.app_port}",
            *[a for audience in want.serves for a in ("--audience", audience)],
            "--broker-url", config.broker_url, "--sa-token-file", attestation_token_file(),
            "--metrics-listen", f"0.0.0.0:{PROXY_METRICS_PORT}"]
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER_NAME,
        "image": config.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["jitmesh", "proxy"],
        "args": args,
        "ports": [{"name": "jitmesh-proxy", "containerPort": want.port, "protocol": "TCP"},
                  {"name": "jitmesh-metrics", "containerPort": PROXY_METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": ATTESTATION_VOLUME, "mountPath": ATTESTATION_MOUNT_PATH, "readOnly": True}],
        # Ready once the broker's keys, the revocation stream and the access policy are current.
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": PROXY_METRICS_PORT},
                           "periodSeconds": 2, "failureThreshold": 3},
        "resources": container_resources(config),
        "securityContext": confinement(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.broker_ca_pem:
        container["env"] = [{"name": ENV_BROKER_CA, "value": config.broker_ca_pem}]
    if config.native_sidecars:
        container["restartPolicy"] = "Always"  # a native sidecar: up before the app, down after it
    return container
