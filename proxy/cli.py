"""`jitmesh proxy`: the access proxy in front of a service (docs/contract.md §7). Heavy
imports wait until the command runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.config import DEFAULT_POLICY_PATH, KEYS_MAX_STALENESS_SECONDS, STREAM_MAX_DOWN_SECONDS


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from jitmesh.log import configure, get_logger
    from proxy.config import ConfigError, ProxyConfig
    from proxy.service import serve

    configure(getattr(args, "log_level", "info"))
    try:
        config = ProxyConfig.from_args(args)
    except ConfigError as exc:
        get_logger("proxy").error("proxy.config_invalid", error=str(exc))
        print(f"jitmesh proxy: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover -- uvicorn[standard] brings it
        pass
    return asyncio.run(serve(config))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "proxy", help="the access proxy in front of a service: verifies jitmesh tokens, asks the access policy",
        description="Verify every request's jitmesh token (keys and revocations from the broker), ask the access "
        "policy about the endpoint, and forward to --upstream or refuse (401/403/503). Also answers /v1/check for "
        "nginx auth_request and Envoy ext_authz.")
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    p.add_argument("--upstream", help="URL of the service behind the proxy (unset: only /v1/check is answered)")
    p.add_argument("--audience", action="append", help="an audience this service accepts (repeatable)")
    p.add_argument("--broker-url", required=True, help="the broker's URL (discovery, /jwks, revocation events)")
    p.add_argument("--broker-ca-file", help="PEM bundle to verify an https broker")
    p.add_argument("--broker-ca", help="the same bundle inline, as PEM text (what the injector sets as "
                   "JITMESH_BROKER_CA)")
    p.add_argument("--sa-token-file", required=True, help="the proxy's ServiceAccount token, to authenticate to the "
                   "broker's event stream")
    p.add_argument("--policy-path", default=DEFAULT_POLICY_PATH, help="the access decision's Rego path")
    p.add_argument("--opa-url", help="evaluate the policy with this OPA's REST API (unset: in-process Wasm)")
    p.add_argument("--metrics-listen", help="HOST:PORT for /healthz, /readyz, /metrics")
    p.add_argument("--stream-max-down", type=float, default=STREAM_MAX_DOWN_SECONDS,
                   help="seconds the revocation stream may be down before every request gets 503")
    p.add_argument("--keys-max-staleness", type=float, default=KEYS_MAX_STALENESS_SECONDS,
                   help="seconds the broker's keys may go unrefreshed before every request gets 503")
    p.add_argument("--leeway", type=float, default=30.0, help="clock leeway for exp/nbf, seconds (at most 30)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers (slowloris bound)")
    p.add_argument("--policy-refresh", type=float, default=30.0,
                   help="seconds between checks for a new in-process policy at the broker (ETag); a fallback, "
                   "as the broker announces a new one on the event stream")
    p.set_defaults(func=_run)
