"""The cluster as built, as events: router admission and policies, Reserve -> Prefill -> KV
transfer -> Decode, colocated Generate, retries, load shedding.

A request's life (router/cluster/orchestrator.py, prefill_node/worker.py, decode_node/worker.py):
1. It reaches the router one hop after it is sent. Over `max_queue` requests in flight it is
   refused at once (429 / RESOURCE_EXHAUSTED). The policy picks (prefill, decode) or a mixed node.
2. Disaggregated: Reserve runs on the decode node's engine thread (between its steps); no
   blocks -> the router marks it full, backs off (50 ms * 2^(n-1)) and routes again, at most
   3 times. Then Prefill: the prompt queues on the prefill node; the step that finishes it
   samples the first token and sends the KV (layer by layer, overlapping the step, or in one
   go after it for prompts up to `one_shot_max_tokens`); when the transfer is done the
   blocks are released and the first token goes back to the client. Decode then admits the
   request into the decode node's batch, which streams the rest.
3. Colocated: Generate queues the request on a mixed node, which runs both phases.
Every call or reply costs `hop_s`; calls run on a node between its steps.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count

from router.cluster.local_prefill import holder_wins
from splitserve.sim.config import ROLES, ClusterConfig, build_nodes, make_router
from splitserve.sim.jump import apply_jump, plan_jump
from splitserve.sim.node import NodeSim
from splitserve.sim.prefix import PrefixCache
from splitserve.sim.profile import Profile
from splitserve.sim.request import SimRequest
from splitserve.sim.routing import NoRoute
from splitserve.sim.shared_steps import SharedHostSteps

__all__ = ["ClusterConfig", "ClusterSim", "build_nodes"]

class ClusterSim(SharedHostSteps):
    def __init__(self, config: ClusterConfig, profiles: dict[str, Profile]):
        missing = [r for r, n in zip(ROLES, (config.prefill, config.decode, config.mixed)) if n and r not in profiles]
        if missing:
            raise ValueError(f"no profile for the {', '.join(missing)} nodes")
        self.config, self.profiles = config, profiles
        self.nodes = build_nodes(config, profiles)
        self.router = make_router(config, self.nodes)
        self.prefix = {n.name: PrefixCache(n.num_blocks * n.block_size) for n in self.nodes}
        self.first_block_holders: dict[int, set[str]] = {}  # a prompt's first hash block -> decode nodes holding it
        if config.decode_affinity or config.max_local_prefill_tokens:
            self.router.prefer_route = self._prefer_route
        self.events: list = []  # (time, order, fn, arg), a heap
        self.hops: deque = deque()  # the same, for events one hop from when they were made: already in order
        self.order = count()
        self.now = 0.0
        self.hop_s = config.hop_s
        self.inflight = 0
        self.unfinished = 0
        self.itl: list[tuple[float, int]] = []  # (step seconds, requests that got a token)
        self.transfer_memo: dict[tuple[int, int, int], tuple[float, float, int]] = {}

    # --- the event loop --------------------------------------------------------------------------

    def at(self, t: float, fn, arg=None) -> None:
        heapq.heappush(self.events, (t, next(self.order), fn, arg))

    def run(self, requests: list[SimRequest]) -> list[SimRequest]:
        """Every event in (time, order) order. Three sources, each in order, are merged: the sorted
        arrivals (they go first on a tie), `hops` (events one hop_s after their making: in order as
        made, so a queue does) and the `events` heap for everything else."""
        arrivals = sorted(requests, key=lambda r: r.arrival_s)
        self.unfinished = len(requests)
        self.at(0.0, self._poll)
        events, hops, hop, i, n = self.events, self.hops, self.config.hop_s, 0, len(arrivals)
        while True:
            from_hops = bool(hops) and (not events or hops[0] < events[0])
            head = hops[0] if from_hops else events[0] if events else None
            if i < n and (head is None or arrivals[i].arrival_s + hop <= head[0]):
                self.now = arrivals[i].arrival_s + hop
                self._arrive(arrivals[i])
                i += 1
                continue
            if head is None:
                return requests
            t, _, fn, arg = hops.popleft() if from_hops else heapq.heappop(events)
            self.now = t
            fn(arg)

    def _poll(self, _=None) -> None:
        self.router.poll()
        if self.unfinished:
            self.at(self.now + self.config.poll_interval_s, self._poll)

    def call(self, node: NodeSim, fn, arg) -> None:
        """fn(arg) on the node's engine thread: after a hop, at its next step boundary."""
        self.after_hop(self._deliver, (node, fn, arg))

    def after_hop(self, fn, arg) -> None:
        """fn(arg) one hop from now (a reply on its way)."""
        self.hops.append((self.now + self.hop_s, next(self.order), fn, arg))

    def _deliver(self, item) -> None:
        node, fn, arg = item
        if node.busy:
            node.calls.append((fn, arg))
            if node.jump is not None:
                self._cut_jump(node)
            return
        fn(arg)
        self._kick(node)

    def _kick(self, node: NodeSim) -> None:
        if node.busy or not (node.decoding or node.waiting or node.prefilling):  # NodeSim.has_work, inlined
            return
        jump = plan_jump(node, self.now) if node.decoding and not node.waiting and not node.prefilling and \
            node.host_peers is None and node.jitter is None else None  # stretched or drawn: one by one
        if jump is not None:
            node.busy, node.jump = True, jump
            return self._schedule_jump(node, jump.steps)
        start = self.now
        seconds, finished, firsts = node.step()
        if seconds <= 0 and not finished and not firsts:
            return  # nothing fits: wait for a call (blocks released, a request admitted)
        if node.jitter is not None and not node.last_step_had_prompt:
            drawn = seconds * node.jitter()
            node.busy_s += drawn - seconds
            seconds = drawn
        node.busy = True
        if node.host_peers is not None:
            return self._start_shared_step(node, start, seconds, finished, firsts)
        heapq.heappush(self.events, (start + seconds, next(self.order), self._step_done,
                                     (node, start, seconds, finished, firsts)))

    def _schedule_jump(self, node: NodeSim, steps: int) -> None:
        node.jump_version += 1
        node.jump_steps = steps
        heapq.heappush(self.events, (node.jump.start_s + node.jump.elapsed_s(steps), next(self.order), self._jump_done,
                                     (node, steps, node.jump_version)))

    def _cut_jump(self, node: NodeSim) -> None:
        steps = node.jump.steps_by(self.now)
        if steps < node.jump_steps:
            self._schedule_jump(node, steps)

    def _jump_done(self, item) -> None:
        node, steps, version = item
        if version != node.jump_version:
            return  # cut short by a call: a later event ends it
        jump, node.jump = node.jump, None
        finished = apply_jump(node, jump, steps)
        self.itl.append((jump.elapsed_s(steps) / steps, steps * jump.num_decodes))
        self._after_step(node, finished, [], 0.0, 0.0)

    def _step_done(self, item) -> None:
        node, start, seconds, finished, firsts = item
        if node.last_decodes:
            self.itl.append((seconds, node.last_decodes))
        self._after_step(node, finished, firsts, start, seconds)

    def _after_step(self, node: NodeSim, finished: list, firsts: list, start: float, seconds: float) -> None:
        node.busy = False
        for req in firsts:
            self._first_token(node, req, start, seconds)
        for req in finished:
            if not req.prefill_only:
                self._done(req, node)
        if node.calls:
            calls, node.calls = node.calls, []
            for fn, arg in calls:
                fn(arg)
        self._kick(node)

    # --- the router ----------------------------------------------------------------------------

    def _arrive(self, req: SimRequest) -> None:
        if self.inflight >= self.config.max_queue:
            return self._fail(req, "RESOURCE_EXHAUSTED: the router is at capacity", counted=False)
        self.inflight += 1
        self._dispatch(req, first=True)

    def _dispatch(self, req: SimRequest, first: bool = False) -> None:
        try:
            prefill, decode = self.router.route(req, req.full)
        except NoRoute as e:
            if first:
                return self._fail(req, f"UNAVAILABLE: {e}")
            req.full.clear()
            return self._retry(req)
        if prefill.num_blocks * prefill.block_size < req.prompt_tokens + req.target:
            return self._fail(req, "INVALID_ARGUMENT: prompt + max_tokens exceeds the KV pool")
        req.prefill_node, req.decode_node = prefill, decode
        if prefill is decode:
            self._colocated(req, prefill)
        else:
            self.router.track(decode, decodes=1)
            self.call(decode, self._reserve, req)

    def _prefer_route(self, req: SimRequest, prefill: NodeSim, chosen: NodeSim, exclude) -> tuple[NodeSim, NodeSim]:
        """Where what the decode nodes hold sends a split request (router/cluster/local_prefill.py): whole to the
        decode node with the fewest prompt tokens left to compute when they are at most --max-local-prefill-tokens
        (conditional disaggregation; not for a RAG request, whose chunk hits the prefill nodes have), else split to
        the one holding the most of it by `holder_wins` (decode affinity). The router knows what each node holds
        from its reports; here the candidates are the decode nodes whose cache has the prompt's first block."""
        uncached = self._uncached_on_holders(req, chosen, exclude)
        best = self.router.by_address[min(uncached, key=uncached.get)]  # the policy's choice first: it wins ties
        if uncached[best.name] <= self.config.max_local_prefill_tokens and not req.cached_tokens:
            return best, best
        if self.config.decode_affinity and holder_wins(self.router.view(chosen), self.router.view(best), uncached,
                                                          self.config.decode_affinity_slack):
            return prefill, best
        return prefill, chosen

    def _uncached_on_holders(self, req: SimRequest, chosen: NodeSim, exclude) -> dict[str, int]:
        """Prompt tokens left to compute on the policy's decode node and on each holding the prompt's first block."""
        uncached = {chosen.name: self._uncached(req, chosen.name)}
        names = self.first_block_holders.get(req.hash_ids[0], set()) if req.hash_ids else set()
        for name in sorted(names):
            if name not in exclude and name != chosen.name:
                uncached[name] = self._uncached(req, name)
                if uncached[name] == req.prompt_tokens:
                    names.discard(name)  # evicted since
        return uncached

    def _hit_on_decode_node(self, req: SimRequest, node: NodeSim) -> int:
        """The prompt tokens `node`'s prefix cache holds; then it holds all of the prompt."""
        if req.hash_ids:
            self.first_block_holders.setdefault(req.hash_ids[0], set()).add(node.name)
        return self.prefix[node.name].hit_tokens(req)

    def _uncached(self, req: SimRequest, name: str) -> int:
        return req.prompt_tokens - min(self.prefix[name].held_tokens(req), req.prompt_tokens - 1)

    def _retry(self, req: SimRequest) -> None:
        if req.retries >= self.config.max_retries:
            return self._fail(req, "RESOURCE_EXHAUSTED: no decode node could reserve the KV blocks")
        req.retries += 1
        backoff = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (req.retries - 1))
        self.at(self.now + backoff, self._dispatch, req)

    def _fail(self, req: SimRequest, error: str, counted: bool = True) -> None:
        req.error = error
        self.unfinished -= 1
        if counted:
            self.inflight -= 1

    def _colocated(self, req: SimRequest, node: NodeSim) -> None:
        self.router.track(node, prefill_tokens=req.prompt_tokens, decodes=1)
        req.prefill_only, req.outputs = False, 0
        self.call(node, self._add_request, (node, req))

    def _add_request(self, item) -> None:
        node, req = item
        on_decode = node.role == "decode"  # run whole there (conditional disaggregation)
        hit = self._hit_on_decode_node(req, node) if on_decode else self.prefix[node.name].hit_tokens(req)
        req.cached_tokens = max(req.cached_tokens, hit)
        node.add_request(req)

    # --- disaggregated -------------------------------------------------------------------------

    def _reserve(self, req: SimRequest) -> None:
        blocks = req.decode_node.reserve(req.prompt_tokens)
        self.after_hop(self._reserved, (req, blocks))

    def _reserved(self, item) -> None:
        req, blocks = item
        if blocks is None:
            self.router.track(req.decode_node, decodes=-1)
            req.full.add(req.decode_node.name)
            return self._retry(req)
        req.reserved = blocks
        held = self._hit_on_decode_node(req, req.decode_node)  # Reserve takes them; then it holds the whole prompt
        req.sent_tokens = req.prompt_tokens - min(held, req.prompt_tokens - 1)
        self.router.track(req.prefill_node, prefill_tokens=req.prompt_tokens)
        req.prefill_only, req.outputs = True, 0
        self.call(req.prefill_node, self._add_request, (req.prefill_node, req))

    def _first_token(self, node: NodeSim, req: SimRequest, start: float, seconds: float) -> None:
        if not req.prefill_only:
            req.first_token_s = self.now + 2 * self.config.hop_s
            return
        self.at(self._transfer_done_s(node, req, start, seconds), self._transferred, req)

    def _transfer_done_s(self, node: NodeSim, req: SimRequest, start: float, seconds: float) -> float:
        """Layer-wise: layer l's send follows its compute, so the end is the later of the last
        layer's own send after the step and the whole send after the first layer. One-shot:
        the whole send after the step."""
        whole, last, layers = self._transfer_times(node.profile, req.prompt_tokens, req.sent_tokens)
        if not layers:
            return start + seconds + whole
        return max(start + seconds + last, start + seconds / layers + whole)

    def _transfer_times(self, profile: Profile, prompt_tokens: int, sent_tokens: int) -> tuple[float, float, int]:
        """(whole send, last layer's send, layers; 0 layers: one-shot, as the prefill node decides by the prompt's
        length) for the KV of `sent_tokens` of a prompt, memoized per profile and lengths (a large simulation sends
        a million prompts of a few thousand lengths)."""
        key = (id(profile), prompt_tokens, sent_tokens)
        times = self.transfer_memo.get(key)
        if times is None:
            shape = profile.engine
            num_bytes = sent_tokens * shape.kv_bytes_per_token
            whole = profile.transfer_s(self.config.transport, num_bytes)
            if prompt_tokens <= shape.one_shot_max_tokens:
                times = (whole, 0.0, 0)
            else:
                layers = shape.num_layers
                times = (whole, profile.transfer_s(self.config.transport, num_bytes / layers), layers)
            self.transfer_memo[key] = times
        return times

    def _transferred(self, req: SimRequest) -> None:
        node = req.prefill_node
        node.release(req.blocks)
        req.blocks = 0
        self._kick(node)  # the released blocks may let a waiting prompt in
        self.after_hop(self._prefill_reply, req)

    def _prefill_reply(self, req: SimRequest) -> None:
        self.router.track(req.prefill_node, prefill_tokens=-req.prompt_tokens)
        req.first_token_s = self.now + self.config.hop_s
        if req.target == 1:
            self.call(req.decode_node, self._cancel_reservation, req)
            return self._client_done(req, req.first_token_s)
        req.prefill_only, req.outputs = False, 1
        self.call(req.decode_node, self._admit, req)

    def _cancel_reservation(self, req: SimRequest) -> None:
        req.decode_node.release(req.reserved)
        self.router.track(req.decode_node, decodes=-1)

    def _admit(self, req: SimRequest) -> None:
        req.decode_node.admit_prefilled(req, req.reserved)

    def _done(self, req: SimRequest, node: NodeSim) -> None:
        if req.prefill_node is req.decode_node:
            self.router.track(node, prefill_tokens=-req.prompt_tokens, decodes=-1)
        else:
            self.router.track(node, decodes=-1)
        self._client_done(req, self.now + 2 * self.config.hop_s)

    def _client_done(self, req: SimRequest, t: float) -> None:
        req.finish_s = t
        self.inflight -= 1
        self.unfinished -= 1

