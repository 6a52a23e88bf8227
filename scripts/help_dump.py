"""Write `baize --help` and every subcommand's --help (recursively) into DIR, one file each, so two
versions can be compared with `diff -r` (issue 27 kept them byte-identical across the move):

    (cd OLD_CHECKOUT && PYTHONPATH=. python3 NEW_CHECKOUT/scripts/help_dump.py /tmp/help-old)
    PYTHONPATH=. python3 scripts/help_dump.py /tmp/help-new && diff -r /tmp/help-old /tmp/help-new
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from baize.cli import build_parser


def walk(parser, path):
    yield path
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + [name])


def main(out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "100"}  # argparse wraps to the terminal: fix it
    for path in walk(build_parser(), []):
        r = subprocess.run([sys.executable, "-m", "baize", *path, "--help"], capture_output=True, text=True, env=env)
        Path(out, ("_".join(path) or "top") + ".txt").write_text(r.stdout + r.stderr + f"rc={r.returncode}\n")


if __name__ == "__main__":
    main(sys.argv[1])
