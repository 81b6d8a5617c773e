"""Service flags that also read the environment: `--kv-port` falls back to SPLITSERVE_KV_PORT.

The node's flags are defined in node/cli.py and the router's in router/cli.py, each next to the
service that reads them; both use `add_flag`. The flags are the services' contract with the Helm
chart and `splitserve up`: add flags, never rename them.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable


def env_name(flag: str) -> str:
    return "SPLITSERVE_" + flag.lstrip("-").upper().replace("-", "_")


def env_default(flag: str, default):
    """The flag's default, replaced by its environment variable when set (typed like the default)."""
    value = os.environ.get(env_name(flag))
    if value is None:
        return default
    if isinstance(default, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, list):  # a flag of several values (nargs): space-separated
        return value.split()
    return type(default)(value) if default is not None else value


def add_flag(parser: argparse.ArgumentParser, flag: str, default, help: str, **kw) -> None:
    parser.add_argument(flag, default=env_default(flag, default), help=f"{help} (env {env_name(flag)})", **kw)


def add_command(subparsers, name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int]) -> None:
    """A `splitserve NAME` subcommand with its flags, running run(args)."""
    parser = subparsers.add_parser(name, help=help)
    add_arguments(parser)
    parser.set_defaults(func=run)
