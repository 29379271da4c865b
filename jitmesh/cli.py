"""The `jitmesh` console script: one subcommand per job (docs/contract.md §1).

Each package registers its own subcommands; this module only wires them together and
applies the rule that every flag can also be set by `JITMESH_<FLAG>` in the environment:
the chosen subcommand's flags only, so that no variable of another command can stop it.
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


def _env_value(action: argparse.Action, name: str, raw: str) -> object:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        low = raw.strip().lower()
        if low not in _TRUE | _FALSE:
            raise FlagEnvError(f"{name}={raw!r}: expected true or false")
        return (low in _TRUE) != isinstance(action, argparse._StoreFalseAction)
    if isinstance(action, argparse._AppendAction):
        return [v.strip() for v in raw.split(",") if v.strip()]
    try:
        return action.type(raw) if callable(action.type) else raw
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise FlagEnvError(f"{name}={raw!r}: {exc}") from exc


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Take the default of each of this parser's own flags from `JITMESH_<FLAG>` when set.

    Subcommands are not visited: their flags are theirs to read when they are chosen
    (`EnvArgumentParser`), so a variable meant for, or only shaped like, another command's flag
    (Kubernetes' service links: Service `jitmesh-broker` -> `JITMESH_BROKER_PORT=tcp://...`)
    never stops this one.
    """
    for action in parser._actions:
        option = _long_option(action)
        if option is None or isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                                 argparse._SubParsersAction)):
            continue
        name = env_name(option)
        if name not in environ:
            continue
        try:
            action.default = _env_value(action, name, environ[name])
        except FlagEnvError as exc:
            raise FlagEnvError(f"{exc} (the environment's value for {option} of `{parser.prog}`; "
                               f"unset {name} or give {option} on the command line)") from exc
        action.required = False


class EnvArgumentParser(argparse.ArgumentParser):
    """A parser that applies its own flags' `JITMESH_<FLAG>` variables when it parses.

    `jitmesh broker --listen ...` runs the root parser, then the chosen subcommand's parser:
    each reads only its own variables, at the moment it is chosen.
    """

    environ: Mapping[str, str] = {}

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        try:
            apply_env_defaults(self, self.environ)
        except FlagEnvError as exc:
            self.error(str(exc))
        return super().parse_known_args(args, namespace)


def _give_environ(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    if isinstance(parser, EnvArgumentParser):
        parser.environ = environ
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _give_environ(sub, environ)


# The commands that run inside a pod, each with the module that registers it: started as one of
# these, the console script imports that module alone, not every package's command line.
_POD_COMMANDS = {"sidecar": "sidecar.cli", "proxy": "proxy.cli", "injector": "injector.cli"}


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (after the root's own `--log-level LEVEL`), or None."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return next(args, None)
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; or, for a command run inside a pod (`sidecar`, `proxy`,
    `injector`), only that command's package, so the process loads nothing it does not use."""
    parser = EnvArgumentParser(
        prog="jitmesh",
        description="Just-in-time credentials for Kubernetes workloads. "
        "Every flag can also be set as JITMESH_<FLAG> in the environment.",
    )
    parser.add_argument("--version", action="version", version=f"jitmesh {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in _POD_COMMANDS:
        import importlib

        importlib.import_module(_POD_COMMANDS[command]).register(sub)
        return parser

    from injector import cli as injector_cli
    from jitmesh import policy_cli, up
    from pdp import cli as pdp_cli
    from proxy import cli as proxy_cli
    from sidecar import cli as sidecar_cli

    # Registering must stay light: `jitmesh sidecar` runs in every pod, and the other
    # commands load their heavy libraries (jwt, cryptography, aiohttp, kubernetes) when run.
    up.register(sub)
    pdp_cli.register(sub)
    injector_cli.register(sub)
    sidecar_cli.register(sub)
    proxy_cli.register(sub)
    policy_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser(chosen_command(sys.argv[1:] if argv is None else argv))
    _give_environ(parser, environ)
    args = parser.parse_args(argv)
    args.environ = dict(environ)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`jitmesh audit | head`): stop quietly, as a Unix tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
