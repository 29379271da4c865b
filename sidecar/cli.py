"""Subcommands served by the credential agent package: sidecar.

`jitmesh sidecar` takes no flags: it is configured by the environment alone (docs/contract.md §1;
the variables are listed in sidecar/config.py). Heavy imports wait until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidecar.config import ConfigError, SidecarConfig


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from jitmesh.log import configure, get_logger
    from sidecar.service import bind, bind_upstreams, check_token_dir, serve

    configure(getattr(args, "log_level", "info"))
    try:
        config = SidecarConfig.from_env(args.environ)
        check_token_dir(config)
        sock = bind(config)
        upstream_socks = bind_upstreams(config)
    except ConfigError as exc:
        get_logger("sidecar").error("sidecar.config_invalid", error=str(exc))
        print(f"jitmesh sidecar: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, sock, upstream_socks))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sidecar", help="the credential agent inside a pod (configured by JITMESH_* environment variables)",
        description="Trade the pod's projected ServiceAccount token for short-lived access tokens, keep them "
        "fresh under JITMESH_TOKEN_DIR and serve them on JITMESH_LISTEN. Configured by the environment: "
        "JITMESH_BROKER_URL, JITMESH_AUDIENCES, JITMESH_SCOPES_<AUDIENCE>, JITMESH_TTL, JITMESH_SA_TOKEN_FILE, "
        "JITMESH_TOKEN_DIR, JITMESH_LISTEN, and the optional extras documented in sidecar/config.py.",
    )
    p.set_defaults(func=_run)
