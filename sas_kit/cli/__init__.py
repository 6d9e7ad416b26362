"""Stage 6 — the ``sas-kit`` command line: a thin front door; each subcommand and benchmark lives in ``sas_kit/cli/``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from sas_kit import __version__

# Subcommand modules, each with register(subparsers). Missing optional ones are reported, not hidden.
COMMANDS = ("data", "augment", "train", "evaluate", "reproduce", "ablate", "bench", "demo", "check_gpu")


def param_pair(text: str) -> tuple[str, object]:
    """A ``--param KEY=VALUE`` option: VALUE parsed as JSON, else kept as a bare word (e.g. roi_mode=bbox)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param expects KEY=VALUE (VALUE as JSON, e.g. scale_range=[0.2,0.5]), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sas-kit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sas-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"sas_kit.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"sas_kit.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
