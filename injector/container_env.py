"""What every application container gets: the token directory, read-only, and where to find it."""

from __future__ import annotations

from typing import Any

from injector.annotations import InjectionRequest
from injector.config import InjectorConfig
from injector.upstreams import upstream_ports
from jitmesh.contract import ENV_AGENT_URL, ENV_TOKEN_DIR, TOKENS_VOLUME, upstream_env_name

APP_ENV_NAMES = (ENV_TOKEN_DIR, ENV_AGENT_URL)


def app_mount(request: InjectionRequest) -> dict[str, Any]:
    return {"name": TOKENS_VOLUME, "mountPath": request.token_dir, "readOnly": True}


def app_env_names(request: InjectionRequest) -> tuple[str, ...]:
    """The variables an app container gets, which it must not set itself."""
    return (*APP_ENV_NAMES, *(upstream_env_name(a.audience) for a in request.upstreams))


def app_env(request: InjectionRequest, config: InjectorConfig) -> list[dict[str, Any]]:
    env = [
        {"name": ENV_TOKEN_DIR, "value": request.token_dir},
        {"name": ENV_AGENT_URL, "value": config.agent_url},
    ]
    # JITMESH_UPSTREAM_<AUDIENCE>: the sidecar's loopback port that forwards to the audience's upstream
    env += [{"name": upstream_env_name(audience), "value": f"http://127.0.0.1:{port}"}
            for audience, port in upstream_ports(request, config).items()]
    return env


def container_ops(path: str, container: dict[str, Any], request: InjectionRequest,
                  config: InjectorConfig) -> list[dict[str, Any]]:
    """JSONPatch operations adding the mount and env to the container at `path`."""
    ops: list[dict[str, Any]] = []
    mount = app_mount(request)
    if container.get("volumeMounts"):
        ops.append({"op": "add", "path": f"{path}/volumeMounts/-", "value": mount})
    else:
        ops.append({"op": "add", "path": f"{path}/volumeMounts", "value": [mount]})
    env = app_env(request, config)
    if container.get("env"):
        ops.extend({"op": "add", "path": f"{path}/env/-", "value": var} for var in env)
    else:
        ops.append({"op": "add", "path": f"{path}/env", "value": env})
    return ops
