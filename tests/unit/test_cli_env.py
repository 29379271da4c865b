"""`JITMESH_<FLAG>` variables: the chosen subcommand reads its own, and nothing else.

Kubernetes gives every container Docker-link variables for each Service of its namespace
(Service `jitmesh-broker` -> `JITMESH_BROKER_PORT=tcp://10.0.0.1:8080`); they look like
flags of other subcommands and must not stop the one that runs.
"""

from __future__ import annotations

import argparse

import pytest

from jitmesh import cli

SERVICE_LINKS = {
    # Service jitmesh-broker: `jitmesh up --broker-port` is an int
    "JITMESH_BROKER_PORT": "tcp://10.97.71.242:8080",
    "JITMESH_BROKER_SERVICE_HOST": "10.97.71.242",
    "JITMESH_BROKER_PORT_8080_TCP": "tcp://10.97.71.242:8080",
    # Service jitmesh-opa, jitmesh-agent, jitmesh-sidecar: `--opa-port`, `--agent-port`, `--sidecar-port`
    "JITMESH_OPA_PORT": "tcp://10.97.0.9:8181",
    "JITMESH_AGENT_PORT": "tcp://10.97.0.10:8099",
    "JITMESH_SIDECAR_PORT": "tcp://10.97.0.11:80",
}


def _parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = cli.build_parser()
    cli._give_environ(parser, environ)
    return parser.parse_args(argv)


def test_service_link_variables_of_other_subcommands_leave_the_sidecar_alone() -> None:
    args = _parse(["sidecar"], SERVICE_LINKS)
    assert args.command == "sidecar"


def test_service_link_variables_of_other_subcommands_leave_the_broker_alone() -> None:
    args = _parse(["broker"], {**SERVICE_LINKS, "JITMESH_LISTEN": "0.0.0.0:8080"})
    assert args.command == "broker"


def test_the_chosen_subcommand_still_takes_its_flags_from_the_environment() -> None:
    args = _parse(["up"], {"JITMESH_BROKER_PORT": "9000"})
    assert args.broker_port == 9000


def test_a_bad_variable_of_the_chosen_subcommand_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["up"], {"JITMESH_BROKER_PORT": "tcp://10.97.71.242:8080"})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "JITMESH_BROKER_PORT='tcp://10.97.71.242:8080'" in err
    assert "--broker-port" in err
    assert "jitmesh up" in err


def test_a_variable_of_a_nested_verb_is_read_only_when_that_verb_runs() -> None:
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    policy = verbs.choices["policy"]
    names = {cli.env_name(o) for sub in policy._actions if isinstance(sub, argparse._SubParsersAction)
             for p in sub.choices.values() for a in p._actions for o in a.option_strings if o.startswith("--")}
    assert names, "policy verbs have flags"
    bad = dict.fromkeys(names, "tcp://10.0.0.1:1")
    assert _parse(["sidecar"], bad).command == "sidecar"


def test_a_bad_boolean_variable_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["injector"], {"JITMESH_NATIVE_SIDECARS": "tcp://10.0.0.1:1"})
    assert "JITMESH_NATIVE_SIDECARS" in capsys.readouterr().err


def test_every_subcommand_parser_reads_the_environment_itself() -> None:
    def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        out = [p]
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    out += parsers(sub)
        return out

    assert all(isinstance(p, cli.EnvArgumentParser) for p in parsers(cli.build_parser()))
