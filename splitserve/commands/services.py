"""`splitserve node` and `splitserve router`: the long-running services.

Each service defines its flags and runs from its own entry point (node/cli.py, router/cli.py);
this module only adds their subcommands to the `splitserve` CLI.
"""

from __future__ import annotations

import node.cli
import router.cli


def register(subparsers) -> None:
    node.cli.register(subparsers)
    router.cli.register(subparsers)
