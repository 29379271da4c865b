"""The credential sidecar container: its env (docs/contract.md §1), mounts, probe and confinement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from injector.annotations import InjectionRequest
from injector.config import InjectorConfig
from injector.upstreams import upstream_ports
from injector.volumes import ATTESTATION_MOUNT_PATH, TOKEN_FILE_GID, attestation_token_file
from jitmesh.contract import (
    ATTESTATION_VOLUME,
    ENV_AUDIENCES,
    ENV_BROKER_CA,
    ENV_BROKER_URL,
    ENV_DPOP,
    ENV_LISTEN,
    ENV_SA_TOKEN_FILE,
    ENV_TOKEN_DIR,
    ENV_TOKEN_GROUP,
    ENV_TTL,
    ENV_UPSTREAM_CA_PREFIX,
    ENV_UPSTREAM_LISTEN_PREFIX,
    ENV_UPSTREAM_URL_PREFIX,
    KIND_JWT,
    KIND_POSTGRESQL,
    SIDECAR_CONTAINER_NAME,
    TOKENS_VOLUME,
    audience_env_suffix,
    kind_env_name,
    scopes_env_name,
)

SIDECAR_UID = 65532  # "nonroot" in distroless images
SIDECAR_GID = TOKEN_FILE_GID
STARTUP_PROBE_SECONDS = 120
POST_START_WAIT_SECONDS = 60


def sidecar_env(request: InjectionRequest, config: InjectorConfig, token_gid: int) -> list[dict[str, str]]:
    env = [
        {"name": ENV_BROKER_URL, "value": config.broker_url},
        {"name": ENV_AUDIENCES, "value": ",".join(a.audience for a in request.audiences)},
    ]
    env += [{"name": scopes_env_name(a.audience), "value": " ".join(a.scopes)}
            for a in request.audiences if a.scopes]
    env += [{"name": kind_env_name(a.audience), "value": a.kind} for a in request.audiences if a.kind != KIND_JWT]
    if request.ttl is not None:
        env.append({"name": ENV_TTL, "value": str(request.ttl)})
    env += [
        {"name": ENV_SA_TOKEN_FILE, "value": attestation_token_file()},
        {"name": ENV_TOKEN_DIR, "value": request.token_dir},
        {"name": ENV_LISTEN, "value": config.agent_listen},
        {"name": ENV_TOKEN_GROUP, "value": str(token_gid)},
    ]
    if config.broker_ca_pem:
        env.append({"name": ENV_BROKER_CA, "value": config.broker_ca_pem})
    if request.dpop:
        env.append({"name": ENV_DPOP, "value": "true"})
    ports = upstream_ports(request, config)
    for a in request.upstreams:
        if a.upstream is None:
            continue
        suffix = audience_env_suffix(a.audience)
        env.append({"name": ENV_UPSTREAM_URL_PREFIX + suffix, "value": a.upstream.url})
        env.append({"name": ENV_UPSTREAM_LISTEN_PREFIX + suffix, "value": f"127.0.0.1:{ports[a.audience]}"})
        if a.upstream.ca_file:
            env.append({"name": ENV_UPSTREAM_CA_PREFIX + suffix, "value": a.upstream.ca_file})
    return env


def _readyz_once(config: InjectorConfig) -> list[str]:
    # The agent listens on the pod's loopback only, which an httpGet probe (sent by the kubelet
    # to the pod IP) cannot reach; so the probe runs inside the container. What it prints on
    # failure (say, the policy's reasons for a denial) the kubelet records as the pod's event.
    code = (
        "import json, sys, urllib.error as e, urllib.request as u\n"
        "try:\n"
        f"    u.urlopen('{config.agent_url}/readyz', timeout=2)\n"
        "except e.HTTPError as x:\n"
        "    sys.exit('jitmesh-sidecar: ' + json.load(x).get('message', str(x.reason)))\n"
        "except Exception as x:\n"
        "    sys.exit(f'jitmesh-sidecar: local API not answering yet ({x})')\n"
    )
    return ["python3", "-c", code]


def _readyz_wait(config: InjectorConfig) -> list[str]:
    code = (
        "import time, urllib.request as u\n"
        f"for _ in range({POST_START_WAIT_SECONDS * 2}):\n"
        "    try:\n"
        f"        u.urlopen('{config.agent_url}/readyz', timeout=1); break\n"
        "    except Exception:\n"
        "        time.sleep(0.5)\n"
    )
    return ["python3", "-c", code]


def container_resources(config: InjectorConfig) -> dict[str, Any]:
    """The requests and limits of every container jitmesh adds (the injector's --sidecar-* flags)."""
    res = config.resources
    return {"requests": {"cpu": res.cpu_request, "memory": res.memory_request},
            "limits": {"cpu": res.cpu_limit, "memory": res.memory_limit}}


class UnknownAppUser(ValueError):
    """The pod asks for a database login but the webhook cannot tell which user will read it."""


def login_reader_uid(spec: Mapping[str, Any], request: InjectionRequest, native_sidecars: bool) -> int | None:
    """The user the sidecar runs as when the pod asks for a database login, None when it asks
    for none. libpq reads `<audience>.pgpass` only when no one but its owner may (mode 0600), and
    a non-root sidecar cannot give a file away, so the sidecar must be the app's own user: the
    `runAsUser` of every container that mounts the tokens (its own, else the pod's), one and
    the same, and not root. Anything else raises UnknownAppUser naming what to set."""
    if not any(a.kind == KIND_POSTGRESQL for a in request.audiences):
        return None
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser")
    readers = list(spec.get("containers") or [])
    if native_sidecars:
        readers += spec.get("initContainers") or []
    uids: dict[int, str] = {}
    for c in readers:
        uid = (c.get("securityContext") or {}).get("runAsUser", pod_uid)
        if isinstance(uid, bool) or not isinstance(uid, int):
            raise UnknownAppUser(
                f"container {c.get('name')!r} has no runAsUser, so the sidecar cannot write the database "
                "login's pgpass file (mode 0600) as the user that reads it; set spec.securityContext.runAsUser "
                "(or the container's) to the app's user")
        uids.setdefault(uid, str(c.get("name")))
    if len(uids) > 1:
        named = ", ".join(f"{name!r} runs as {uid}" for uid, name in sorted(uids.items()))
        raise UnknownAppUser(f"the containers run as different users ({named}); the database login's pgpass "
                             "file (mode 0600) can be readable by one user only: run them as one runAsUser")
    uid = next(iter(uids), None)
    if uid is None:
        raise UnknownAppUser("the pod has no container to read the database login")
    if uid == 0:
        raise UnknownAppUser("the app runs as root (runAsUser 0), and the sidecar, which must run as the "
                             "pgpass file's reader, never does; run the app as a non-root runAsUser")
    return uid


def confinement(uid: int = SIDECAR_UID) -> dict[str, Any]:
    """The securityContext of every container jitmesh adds: what the restricted Pod Security
    Standard asks, and a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": SIDECAR_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def sidecar_container(request: InjectionRequest, config: InjectorConfig, token_gid: int,
                      uid: int | None = None,
                      ca_mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`uid`: the app's user, for a pod with a database login (`login_reader_uid`).
    `ca_mounts`: the app's volumes holding upstream CA files, read-only at the same paths."""
    container: dict[str, Any] = {
        "name": SIDECAR_CONTAINER_NAME,
        "image": config.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["jitmesh", "sidecar"],
        "env": sidecar_env(request, config, token_gid),
        "volumeMounts": [
            {"name": TOKENS_VOLUME, "mountPath": request.token_dir},
            {"name": ATTESTATION_VOLUME, "mountPath": ATTESTATION_MOUNT_PATH, "readOnly": True},
            *(ca_mounts or []),
        ],
        # Passes once every audience has a token: later containers start with tokens present.
        "startupProbe": {
            "exec": {"command": _readyz_once(config)},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": STARTUP_PROBE_SECONDS,
        },
        "resources": container_resources(config),
        "securityContext": confinement(SIDECAR_UID if uid is None else uid),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.native_sidecars:
        # A native sidecar (KEP-753): started before, and stopped after, the app containers.
        container["restartPolicy"] = "Always"
    else:
        # Without native sidecars the kubelet starts containers in order and waits for each
        # postStart hook, so a hook that waits for the first tokens holds the app containers back.
        container["lifecycle"] = {"postStart": {"exec": {"command": _readyz_wait(config)}}}
    return container
