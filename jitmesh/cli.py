"""The `jitmesh` console script: one subcommand per job (docs/contract.md §1).

Each package registers its own subcommands; this module only wires them together and
applies the rule that every flag can also be set by `JITMESH_<FLAG>` in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from jitmesh import __version__

Command = Callable[[argparse.Namespace], int]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class FlagEnvError(ValueError):
    pass


def env_name(option: str) -> str:
    """`--subject-audience` -> `JITMESH_SUBJECT_AUDIENCE`."""
    return "JITMESH_" + option.lstrip("-").upper().replace("-", "_")


def _long_option(action: argparse.Action) -> str | None:
    longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
    return longs[0] if longs else None


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Take each flag's default from `JITMESH_<FLAG>` when set; recurse into subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_env_defaults(sub, environ)
            continue
        option = _long_option(action)
        if option is None or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = env_name(option)
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction)):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise FlagEnvError(f"{name}={raw!r}: expected true or false")
            value: object = low in _TRUE
            if isinstance(action, argparse._StoreFalseAction):
                value = not value
        elif isinstance(action, argparse._AppendAction):
            value = [v.strip() for v in raw.split(",") if v.strip()]
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError) as exc:
                raise FlagEnvError(f"{name}={raw!r}: {exc}") from exc
        action.default = value
        action.required = False


def build_parser() -> argparse.ArgumentParser:
    from injector import cli as injector_cli
    from jitmesh import policy_cli, up
    from pdp import cli as pdp_cli
    from sidecar import cli as sidecar_cli

    parser = argparse.ArgumentParser(
        prog="jitmesh",
        description="Just-in-time credentials for Kubernetes workloads. "
        "Every flag can also be set as JITMESH_<FLAG> in the environment.",
    )
    parser.add_argument("--version", action="version", version=f"jitmesh {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Registering must stay light: `jitmesh sidecar` runs in every pod, and the other
    # commands load their heavy libraries (jwt, cryptography, aiohttp, kubernetes) when run.
    up.register(sub)
    pdp_cli.register(sub)
    injector_cli.register(sub)
    sidecar_cli.register(sub)
    policy_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        apply_env_defaults(parser, environ)
    except FlagEnvError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    args.environ = dict(environ)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
