"""Routing policies: pure functions of (node snapshot, request) -> Route.

A Route names a prefill node and a decode node; the same mixed node in both places means the
request runs colocated there. Registered by name; `get_policy` raises KeyError listing names.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

from splitserve import labels
from router.nodes import NodeView


@dataclass(frozen=True)
class RouteRequest:
    num_prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Route:
    prefill: NodeView
    decode: NodeView

    @property
    def colocated(self) -> bool:
        return self.prefill.address == self.decode.address


class NoRoute(Exception):
    """No healthy node can take the request (-> UNAVAILABLE)."""


Policy = Callable[[list[NodeView], RouteRequest], Route]
_POLICIES: dict[str, Callable[[], Policy]] = {}


def register(name: str):
    def wrap(factory):
        _POLICIES[name] = factory
        return factory
    return wrap


def get_policy(name: str) -> Policy:
    try:
        return _POLICIES[name]()
    except KeyError:
        raise KeyError(f"unknown routing policy {name!r}; available: {', '.join(sorted(_POLICIES))}") from None


def healthy(nodes: list[NodeView], role: str, exclude: frozenset[str] = frozenset()) -> list[NodeView]:
    return [n for n in nodes if n.role == role and n.healthy and n.address not in exclude]


def prefill_load(n: NodeView) -> tuple:
    return (n.inflight_prefill_tokens, n.num_waiting, n.address)


def decode_load(n: NodeView) -> tuple:
    return (n.inflight_decodes, -n.free_blocks, n.address)


def split_or_colocated(nodes: list[NodeView], choose_prefill, choose_decode, choose_mixed) -> Route:
    prefills, decodes = healthy(nodes, labels.ROLE_PREFILL), healthy(nodes, labels.ROLE_DECODE)
    if prefills and decodes:
        return Route(choose_prefill(prefills), choose_decode(decodes))
    mixed = healthy(nodes, labels.ROLE_MIXED)
    if mixed:
        node = choose_mixed(mixed)
        return Route(node, node)
    raise NoRoute("no healthy prefill+decode pair and no healthy mixed node")


@register("least_loaded")
def least_loaded() -> Policy:
    """Least outstanding work per phase: prefill by pending prompt tokens, decode by running
    requests then free KV blocks, mixed nodes by both."""
    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        return split_or_colocated(
            nodes, lambda ps: min(ps, key=prefill_load), lambda ds: min(ds, key=decode_load),
            lambda ms: min(ms, key=lambda n: (n.inflight_prefill_tokens + n.inflight_decodes, n.address)))
    return choose


@register("round_robin")
def round_robin() -> Policy:
    counter = itertools.count()

    def choose(nodes: list[NodeView], request: RouteRequest) -> Route:
        turn = next(counter)
        pick = lambda ns: sorted(ns, key=lambda n: n.address)[turn % len(ns)]
        return split_or_colocated(nodes, pick, pick, pick)
    return choose
