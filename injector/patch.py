"""What a pod gets: a pure function of (admission request, namespace labels, config) to an outcome.

`admit` decides whether a pod is injected (docs/contract.md §4) and builds the JSONPatch from the
parts in `annotations`, `container_sidecar`, `container_env` and `volumes`. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from injector import annotations as pod_annotations
from injector.annotations import AnnotationError, InjectionRequest
from injector.config import InjectorConfig
from injector.container_env import app_env_names, container_ops
from injector.container_proxy import PROXY_METRICS_PORT, proxy_container
from injector.container_sidecar import UnknownAppUser, login_reader_uid, sidecar_container
from injector.review import AdmissionRequest
from injector.upstreams import ca_mounts, upstream_ports
from injector.volumes import attestation_volume, token_file_group, tokens_volume
from jitmesh.contract import (
    ANNOTATION_PROTECT,
    ANNOTATION_STATUS,
    ANNOTATION_UPSTREAM_PREFIX,
    ATTESTATION_VOLUME,
    LABEL_INJECT,
    NAMESPACE_LABEL_INJECTION,
    PROXY_CONTAINER_NAME,
    SIDECAR_CONTAINER_NAME,
    STATUS_INJECTED,
    TOKENS_VOLUME,
)

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True)
class Unchanged:
    """Allowed as it is."""

    reason: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Injected:
    patch: list[dict[str, Any]]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    message: str
    code: int = 400
    reason: str = "BadRequest"


Outcome = Unchanged | Injected | Refused


def is_pod_creation(request: AdmissionRequest) -> bool:
    return (request.kind.get("group", "") == "" and request.kind.get("kind") == "Pod"
            and request.sub_resource == "" and request.operation == "CREATE"
            and isinstance(request.object, dict))


def needs_namespace_labels(request: AdmissionRequest) -> bool:
    """Whether the decision depends on the namespace's labels (the pod's own label does not settle it)."""
    if not is_pod_creation(request):
        return False
    meta = request.object.get("metadata") or {}
    if (meta.get("annotations") or {}).get(ANNOTATION_STATUS) == STATUS_INJECTED:
        return False
    return (meta.get("labels") or {}).get(LABEL_INJECT) not in ("true", "false")


def admit(request: AdmissionRequest, namespace_labels: Mapping[str, str] | None,
          config: InjectorConfig) -> Outcome:
    """The outcome for one admission request. `namespace_labels` may be None only when
    `needs_namespace_labels(request)` is false."""
    if not is_pod_creation(request):
        return Unchanged("not a pod creation")
    pod: dict[str, Any] = request.object
    meta = pod.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    notes: list[str] = []

    if (meta.get("annotations") or {}).get(ANNOTATION_STATUS) == STATUS_INJECTED:
        return Unchanged("already injected")
    label = labels.get(LABEL_INJECT)
    if label not in (None, "true", "false"):
        notes.append(f'label {LABEL_INJECT}={label!r} is neither "true" nor "false"; '
                     "only the namespace label decides")
    if label == "true":
        wanted = True
    elif label == "false":
        wanted = False
    else:
        if namespace_labels is None:
            raise ValueError("namespace labels are needed to decide this pod")
        wanted = namespace_labels.get(NAMESPACE_LABEL_INJECTION) == "enabled"
    if not wanted:
        return Unchanged("not opted in", tuple(notes))

    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        notes.append(f"{SIDECAR_CONTAINER_NAME} not injected: the pod uses the host network, where the "
                     "agent's 127.0.0.1 port would be open to every host-network process on the node")
        return Unchanged("host network", tuple(notes))

    try:
        want = pod_annotations.parse(meta.get("annotations") or {}, config.default_audiences)
    except AnnotationError as exc:
        return Refused(f"jitmesh injection refused: annotation {exc}")
    _, ca_problems = ca_mounts(spec, want)
    if ca_problems:
        return Refused(f"jitmesh injection refused: annotation {ca_problems[0]}")
    conflicts = _conflicts(spec, want, config)
    if conflicts:
        return Refused("jitmesh injection refused: the pod already has " + "; ".join(conflicts)
                       + ". Rename them, or label the pod jitmesh.io/inject=\"false\" to opt out.",
                       code=409, reason="Conflict")
    try:
        login_uid = login_reader_uid(spec, want, config.native_sidecars)
    except UnknownAppUser as exc:
        return Refused(f"jitmesh injection refused: {exc}")
    return Injected(_patch(pod, want, config, login_uid), tuple(notes))


def _conflicts(spec: Mapping[str, Any], want: InjectionRequest, config: InjectorConfig) -> list[str]:
    found: list[str] = []
    env_names = app_env_names(want)
    upstream_port_of = {port: audience for audience, port in upstream_ports(want, config).items()}
    for v in spec.get("volumes") or []:
        if v.get("name") in (TOKENS_VOLUME, ATTESTATION_VOLUME):
            found.append(f"a volume named {v['name']!r}")
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            name = c.get("name")
            where = f"{kind[:-1]} {name!r}"
            if name == SIDECAR_CONTAINER_NAME:
                found.append(f"a container named {SIDECAR_CONTAINER_NAME!r} ({kind})")
            for m in c.get("volumeMounts") or []:
                if m.get("name") in (TOKENS_VOLUME, ATTESTATION_VOLUME):
                    found.append(f"{where} mounting a volume named {m['name']!r}")
                elif m.get("mountPath", "").rstrip("/") == want.token_dir:
                    found.append(f"{where} mounting {m.get('name')!r} at the token directory {want.token_dir}")
            for e in c.get("env") or []:
                if e.get("name") in env_names:
                    found.append(f"{where} setting env {e['name']}")
            for p in c.get("ports") or []:
                if p.get("containerPort") in upstream_port_of:
                    audience = upstream_port_of[p["containerPort"]]
                    found.append(f"{where} declaring port {p['containerPort']}, which the jitmesh agent forwards "
                                 f"to the upstream of {audience!r} from ({ANNOTATION_UPSTREAM_PREFIX}{audience})")
                if want.audiences and p.get("containerPort") == config.agent_port:
                    found.append(f"{where} declaring port {config.agent_port}, which the jitmesh agent "
                                 "listens on")
                if want.protect is not None and p.get("containerPort") in (want.protect.port, PROXY_METRICS_PORT):
                    found.append(f"{where} declaring port {p.get('containerPort')}, which the jitmesh proxy "
                                 f"listens on ({ANNOTATION_PROTECT})")
            if name == PROXY_CONTAINER_NAME:
                found.append(f"a container named {PROXY_CONTAINER_NAME!r} ({kind})")
    if want.protect is not None and want.audiences and want.protect.port == config.agent_port:
        found.append(f"{ANNOTATION_PROTECT} port {config.agent_port}, which the jitmesh agent listens on")
    return found


def _patch(pod: dict[str, Any], want: InjectionRequest, config: InjectorConfig,
           login_uid: int | None = None) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    init_containers = spec.get("initContainers") or []
    ops: list[dict[str, Any]] = []

    new_annotations = {ANNOTATION_STATUS: STATUS_INJECTED}
    if not config.native_sidecars and containers and DEFAULT_CONTAINER_ANNOTATION not in (
            meta.get("annotations") or {}):
        # The sidecar goes first, so `kubectl logs/exec` would pick it without this.
        new_annotations[DEFAULT_CONTAINER_ANNOTATION] = containers[0].get("name", "")
    if meta.get("annotations"):
        ops += [{"op": "add", "path": f"/metadata/annotations/{_escape(k)}", "value": v}
                for k, v in new_annotations.items()]
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": new_annotations})

    volumes = [tokens_volume(), attestation_volume(config)] if want.audiences else [attestation_volume(config)]
    if spec.get("volumes"):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})

    added: list[dict[str, Any]] = []  # jitmesh's own containers, in the order they start
    if want.audiences:
        # Init containers only see tokens when the native sidecar starts before them.
        if config.native_sidecars:
            for i, c in enumerate(init_containers):
                ops += container_ops(f"/spec/initContainers/{i}", c, want, config)
        for i, c in enumerate(containers):
            ops += container_ops(f"/spec/containers/{i}", c, want, config)
        token_gid, group_ops = token_file_group(spec)
        ops += group_ops
        added.append(sidecar_container(want, config, token_gid, login_uid, ca_mounts(spec, want)[0]))
    if want.protect is not None:
        added.append(proxy_container(want.protect, config))

    # Inserted last, so the indexes above are those of the pod as it was sent.
    field = "initContainers" if config.native_sidecars else "containers"
    if spec.get(field):
        ops += [{"op": "add", "path": f"/spec/{field}/{i}", "value": c} for i, c in enumerate(added)]
    else:
        ops.append({"op": "add", "path": f"/spec/{field}", "value": added})
    return ops


def _escape(key: str) -> str:
    """RFC 6901: `~` as `~0`, `/` as `~1`."""
    return key.replace("~", "~0").replace("/", "~1")
