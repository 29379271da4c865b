"""Subcommands served by the admission webhook package: injector, certs."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

from injector.config import DEFAULT_AGENT_PORT, DEFAULT_LISTEN, DEFAULT_SIDECAR_IMAGE, InjectorConfigError, ServerConfig
from jitmesh import log as jlog
from jitmesh.contract import DEFAULT_SUBJECT_AUDIENCE


def register(sub: Any) -> None:
    p = sub.add_parser("injector", help="the admission webhook (HTTPS)",
                       description="Mutating admission webhook: adds the jitmesh sidecar to opted-in pods.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve HTTPS on")
    p.add_argument("--tls-cert-file", help="serving certificate (PEM), e.g. from `jitmesh certs`")
    p.add_argument("--tls-key-file", help="its private key (PEM)")
    p.add_argument("--broker-url", help="the broker URL sidecars are told")
    p.add_argument("--broker-ca-file", help="PEM CA of an https broker, given to every sidecar (JITMESH_BROKER_CA)")
    p.add_argument("--subject-audience", default=DEFAULT_SUBJECT_AUDIENCE,
                   help="audience of the projected ServiceAccount token the sidecar presents")
    p.add_argument("--sidecar-image", default=DEFAULT_SIDECAR_IMAGE)
    p.add_argument("--native-sidecars", action=argparse.BooleanOptionalAction, default=True,
                   help="inject a native sidecar (init container with restartPolicy Always); "
                        "--no-native-sidecars for clusters before Kubernetes 1.29")
    p.add_argument("--default-audiences", default="",
                   help="comma-separated audiences for injected pods without jitmesh.io/audiences")
    p.add_argument("--agent-port", type=int, default=DEFAULT_AGENT_PORT,
                   help="loopback port of the sidecar's local API inside each pod")
    p.add_argument("--kubeconfig", help="kubeconfig for reading namespace labels (default: in-cluster)")
    p.add_argument("--namespace-cache-seconds", type=float, default=5.0,
                   help="how long a namespace's labels are reused")
    p.set_defaults(func=run_injector)

    c = sub.add_parser("certs", help="CA and serving certificate for the webhook, and the caBundle",
                       description="Writes ca.crt, tls.crt and tls.key into --out and prints the base64 caBundle.")
    c.add_argument("--out", required=True, help="directory to write into")
    c.add_argument("--dns-name", action="append", default=[], help="a DNS name of the webhook (repeatable)")
    c.add_argument("--ip", action="append", default=[], help="an IP address of the webhook (repeatable)")
    c.add_argument("--force", action="store_true", help="replace a CA already in --out")
    c.set_defaults(func=run_certs)


def run_injector(args: argparse.Namespace) -> int:
    import uvicorn
    from kubernetes.client import CoreV1Api

    from injector.app import create_app
    from injector.namespaces import KubeNamespaceLabels, api_client

    jlog.configure(args.log_level)
    log = jlog.get_logger("injector")
    try:
        cfg = ServerConfig.from_args(args)
    except InjectorConfigError as exc:
        print(f"jitmesh injector: {exc}", file=sys.stderr)
        return 2
    try:
        kube = api_client(cfg.kubeconfig)
    except Exception as exc:
        print("jitmesh injector: no Kubernetes API access to read namespace labels "
              f"({type(exc).__name__}: {exc}); run in a pod with a ServiceAccount or pass --kubeconfig",
              file=sys.stderr)
        return 2
    app = create_app(cfg.injection, KubeNamespaceLabels(CoreV1Api(kube), ttl=cfg.namespace_cache_seconds))
    log.info("injector.start", listen=f"{cfg.host}:{cfg.port}", broker_url=cfg.injection.broker_url,
             native_sidecars=cfg.injection.native_sidecars, sidecar_image=cfg.injection.sidecar_image)
    # Startup objects (the kubernetes client's models, mostly) never die; a full collection over
    # them takes ~9 ms, paid by whichever admission triggers it. Frozen, they are skipped.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=cfg.host, port=cfg.port, ssl_certfile=str(cfg.tls_cert_file),
                ssl_keyfile=str(cfg.tls_key_file), log_config=None, access_log=False)
    return 0


def run_certs(args: argparse.Namespace) -> int:
    from injector.certs import CertError, write_webhook_certs

    try:
        written = write_webhook_certs(Path(args.out), args.dns_name, args.ip, replace_ca=args.force)
    except CertError as exc:
        print(f"jitmesh certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"jitmesh certs: cannot write into {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {written.ca_file}, {written.cert_file}, {written.key_file}", file=sys.stderr)
    print(written.ca_bundle)
    return 0
