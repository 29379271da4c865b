"""Credential injection (`jitmesh.io/upstream.<audience>`): which loopback port the sidecar
forwards each audience's upstream from, and the app containers' volumes it must see to read
an upstream's CA file. Pure functions of the pod and the injector's configuration."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from injector.annotations import InjectionRequest
from injector.config import PROXY_METRICS_PORT, UPSTREAM_BASE_PORT, InjectorConfig
from jitmesh.contract import ANNOTATION_UPSTREAM_CA_PREFIX, ATTESTATION_VOLUME, TOKENS_VOLUME


def reserved_ports(request: InjectionRequest, config: InjectorConfig) -> set[int]:
    """Ports some other part of the injected pod listens on."""
    ports = {config.agent_port, PROXY_METRICS_PORT}
    if request.protect is not None:
        ports |= {request.protect.port, request.protect.app_port}
    return ports


def upstream_ports(request: InjectionRequest, config: InjectorConfig) -> dict[str, int]:
    """Each upstream audience's loopback port: counting up from UPSTREAM_BASE_PORT in the order
    the pod lists its audiences, skipping the ports the agent and the proxy use. The same pod
    always gets the same ports."""
    taken = reserved_ports(request, config)
    ports: dict[str, int] = {}
    port = UPSTREAM_BASE_PORT
    for a in request.upstreams:
        while port in taken:
            port += 1
        ports[a.audience] = port
        taken.add(port)
    return ports


def _covers(mount_path: str, path: str) -> bool:
    base = mount_path.rstrip("/") or "/"
    return path == base or path.startswith(base.rstrip("/") + "/")


def ca_mounts(spec: Mapping[str, Any], request: InjectionRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The app containers' mounts that hold each upstream's CA file, to give the sidecar read-only
    at the same paths; and, for a CA no container mounts, what is wrong."""
    mounts: list[dict[str, Any]] = []
    problems: list[str] = []
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for a in request.upstreams:
        path = a.upstream.ca_file if a.upstream is not None else None
        if path is None:
            continue
        found = None
        for c in containers:
            for m in c.get("volumeMounts") or []:
                mount_path = str(m.get("mountPath", ""))
                if m.get("name") in (TOKENS_VOLUME, ATTESTATION_VOLUME) or not mount_path.startswith("/"):
                    continue
                if _covers(posixpath.normpath(mount_path), path) and (
                        found is None or len(mount_path) > len(found["mountPath"])):
                    found = m
        if found is None:
            problems.append(f"{ANNOTATION_UPSTREAM_CA_PREFIX}{a.audience}: no container mounts a volume holding "
                            f"{path}; mount the CA (e.g. from a ConfigMap) in an app container so the sidecar "
                            "can be given the same volume")
            continue
        mount = {"name": found["name"], "mountPath": found["mountPath"], "readOnly": True}
        if found.get("subPath"):
            mount["subPath"] = found["subPath"]
        if mount not in mounts:
            mounts.append(mount)
    return mounts, problems
