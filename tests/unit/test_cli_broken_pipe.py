"""A command whose reader goes away (`jitmesh ... | head -1`) exits quietly, with no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_output_piped_into_a_reader_that_stops_ends_without_a_traceback() -> None:
    # a subcommand that prints far more than a pipe holds, run through the CLI's own main()
    script = ("import sys\n"
              "from jitmesh import cli\n"
              "def spam(args):\n"
              "    for _ in range(200000):\n"
              "        print('record ' * 10)\n"
              "    return 0\n"
              "parser_of = cli.build_parser\n"
              "def build(*args):\n"
              "    p = parser_of()\n"
              "    for action in p._subparsers._group_actions:\n"
              "        action.choices['up'].set_defaults(func=spam)\n"
              "    return p\n"
              "cli.build_parser = build\n"
              "sys.exit(cli.main(['up']))\n")
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert writer.stdout is not None
    writer.stdout.readline()
    writer.stdout.close()
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
