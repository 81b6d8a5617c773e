"""The `splitserve` command: one subcommand per module, each registering its own parser.

A command module exposes `register(subparsers)`, which adds its parser and sets
`func=handler` as a default; the handler takes the parsed namespace and returns an exit code.
Modules are imported when the parser is built, so keep their top level light (import
torch, grpc and friends inside the handlers).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "splitserve.commands.make_model",
    "splitserve.commands.generate",
    "splitserve.commands.convert",
    "splitserve.commands.services",
    "splitserve.commands.bench",
    "splitserve.commands.cluster",
    "splitserve.commands.certs",
    "splitserve.commands.ingest",
    "splitserve.commands.profile",
    "splitserve.commands.simulate",
    "splitserve.commands.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitserve", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
