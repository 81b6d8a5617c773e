"""The node flags that shape a profile (device, dtype, KV cache dtype, threads, KV pool, scheduler limits, one-shot
KV sends), defined once in node/cli.py: `splitserve profile` takes their definitions and defaults from there, so
a profile is measured for what a node started with the same flags would run."""

from __future__ import annotations

import argparse

SHAPE_FLAGS = ("--device", "--dtype", "--kv-cache-dtype", "--threads", "--kv-cache-bytes", "--num-blocks",
               "--block-size", "--max-num-seqs", "--max-batched-tokens", "--one-shot-max-tokens")


def _node_parser() -> argparse.ArgumentParser:
    from node.cli import add_node_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_node_arguments(parser)
    return parser


def node_defaults() -> argparse.Namespace:
    """Every node flag at its default (SPLITSERVE_<FLAG> applied, as on the node)."""
    return _node_parser().parse_args([])


def add_shape_flags(group) -> None:
    """SHAPE_FLAGS as the node defines them (type, default, help) on an argparse group."""
    for action in _node_parser()._actions:
        if action.option_strings and action.option_strings[0] in SHAPE_FLAGS:
            group.add_argument(action.option_strings[0], type=action.type, default=action.default,
                               choices=action.choices, help=action.help)
