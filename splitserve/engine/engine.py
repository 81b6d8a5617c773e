"""Engine: the single-process inference engine that prefill, decode and mixed nodes all run.

A request's life: `add_request` validates and queues it -> each `step()` is
`schedule()` -> `execute(plan)` -> `update(results)` -> it finishes on EOS, a stop token or
string, or max_tokens, and its blocks return to the pool. Two entries serve the split:
prefill-only requests stop after sampling their first token and may keep their blocks
until `release()` (the KV is sent meanwhile); decode-only requests enter through
`reserve()` + KV written from outside + `admit_prefilled()`.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, replace
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from splitserve.engine.attention import PagedKVCache, leave_out_cudnn_sdpa
from splitserve.engine.block_pool import BlockPool, kv_root
from splitserve.engine.config import EngineConfig, ModelConfig
from splitserve.engine.errors import UnknownAdapter
from splitserve.engine.grammar import Grammars
from splitserve.engine.cpu_linear import pack_linears
from splitserve.engine.loader import load_model
from splitserve.engine.lora import LoraAdapter, load_adapter, load_adapters
from splitserve.engine.lora_names import check_lora_name
from splitserve.engine.model import LayerHook
from splitserve.engine.output import Completion, OutputTracker, RequestOutput, collect
from splitserve.engine.pooling import PoolingParams
from splitserve.engine.request import FinishReason, Request, penalty_history
from splitserve.engine.runner import ModelRunner
from splitserve.engine.sampling import SamplingParams, check_cache_salt, check_prompt, kv_namespace
from splitserve.engine.scheduler import Scheduler, SchedulerOutput
from splitserve.engine.tokenizer import Tokenizer
from splitserve.engine.token_limits import with_bad_word_ids

log = logging.getLogger(__name__)
EMBEDDING_PARAMS = SamplingParams(max_tokens=1)  # an embedding request samples nothing (pooling.py)


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int
    num_running: int
    num_pending_prefill_tokens: int
    num_total_blocks: int
    num_free_blocks: int
    num_reserved: int
    num_held: int
    block_size: int
    lora_adapters: tuple[str, ...] = ()  # the adapters requests may name (EngineConfig.lora_modules)
    # (adapter, requests waiting, requests running) for each adapter loaded or still run by a request
    lora_requests: tuple[tuple[str, int, int], ...] = ()
    prefix_caching: bool = True  # EngineConfig.enable_prefix_caching
    # (adapter, its load_id) for each adapter requests may name: their prompts' blocks hash from kv_root with it
    lora_load_ids: tuple[tuple[str, str], ...] = ()
    spec_draft_tokens: int = 0  # speculation.py, since start: drafts checked
    spec_accepted_tokens: int = 0  # and of those, kept
    # those of lora_adapters loaded at start (--lora-modules) and not unloaded since: the node's own configuration
    startup_lora_adapters: tuple[str, ...] = ()

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks


class Engine:
    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        self.model_config = ModelConfig.from_dir(model_dir)
        self.tokenizer = Tokenizer.from_dir(model_dir)
        self.model = load_model(model_dir, config.torch_dtype, config.device)
        self.adapters = load_adapters(config.lora_modules, self.model_config, config.torch_dtype, config.device)
        self._startup_adapters = dict(self.adapters)  # name -> the adapter loaded at start
        leave_out_cudnn_sdpa(config.device)
        if config.packed_cpu_linear:
            pack_linears(self.model, quantized=config.quant_cpu_linear)
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        num_blocks = config.num_blocks or self._blocks_for(config.kv_cache_bytes)
        self.pool = BlockPool(num_blocks, config.block_size, config.enable_prefix_caching)
        mc = self.model_config
        self.cache = PagedKVCache(mc.num_layers, num_blocks, config.block_size, mc.num_kv_heads, mc.head_dim,
                                  config.kv_torch_dtype, config.device)
        self.scheduler = Scheduler(self.pool, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_embedding_tokens_per_step)
        self.runner = ModelRunner(self.model, self.cache, config.device, config.seed)
        self.requests: dict[str, Request] = {}
        self.held: dict[str, Request] = {}  # finished prefill-only requests keeping their blocks
        self.reserved: dict[str, list[int]] = {}  # decode-only: blocks waiting for their KV
        # decode-only: a reservation's leading blocks taken from the prefix cache: their prompt tokens, KV namespace
        # (cache salt, LoRA adapter) and the adapter's load_id (None without)
        self._reserved_prefix: dict[str, tuple[list[int], str | None, str | None]] = {}
        # decode-only: each unloaded adapter (by load_id) and the reservations made before: their decodes still run it
        self._retired: dict[str, tuple[LoraAdapter, set[str]]] = {}
        self.outputs = OutputTracker(self.tokenizer)
        self.grammars = Grammars(self.tokenizer, self.model_config.vocab_size)
        self._ids = itertools.count()
        self.spec_counts = [0, 0]  # drafts checked, drafts kept (speculation.py)

    def _blocks_for(self, num_bytes: int) -> int:
        per_block = self.model_config.kv_bytes_per_token(self.config.kv_torch_dtype) * self.config.block_size
        return max(1, num_bytes // per_block)

    # --- admission ---------------------------------------------------------------------------

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, prefill_only: bool = False, keep_blocks: bool = False,
                    num_prior_output_tokens: int = 0) -> str:
        params = with_bad_word_ids(params or SamplingParams(), self.tokenizer)
        request_id = request_id or f"req-{next(self._ids)}"
        self.validate(prompt_token_ids, params, request_id, num_prior_output_tokens)
        req = Request(request_id, list(prompt_token_ids), params, self.tokenizer.eos_token_ids, prefill_only,
                      num_prior_output_tokens, arrival_time_s=time.monotonic(), keep_blocks=keep_blocks,
                      adapter=self.adapter_for(params, request_id))
        req.matcher = self.matcher(params, req.penalty_history()[1])
        self._track(req)
        self.scheduler.add(req)
        return request_id

    def add_embedding(self, prompt_token_ids: list[int], pooling: PoolingParams | None = None,
                      request_id: str | None = None) -> str:
        """An embedding request (pooling.py): its finished output carries `embedding`."""
        pooling = pooling or PoolingParams()
        request_id = request_id or f"req-{next(self._ids)}"
        self.validate_embedding(prompt_token_ids, request_id)
        # the scheduler reads the priority there, the prefix cache the salt
        params = replace(EMBEDDING_PARAMS, priority=pooling.priority, cache_salt=pooling.cache_salt)
        req = Request(request_id, list(prompt_token_ids), params, self.tokenizer.eos_token_ids,
                      prefill_only=True, arrival_time_s=time.monotonic(), pooling=pooling)
        self._track(req)
        self.scheduler.add(req)
        return request_id

    def validate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str = "",
                 num_prior_output_tokens: int = 0) -> None:
        """Raises ValueError naming the violated limit; changes nothing. An empty request_id skips the id check."""
        self._check_id_and_prompt(prompt_token_ids, request_id)
        self._check_params(prompt_token_ids, params, request_id, num_prior_output_tokens)

    def _check_params(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
                      num_prior_output_tokens: int) -> None:
        params.check_vocab(self.model_config.vocab_size)
        self.adapter_for(params, request_id)
        if params.grammar is not None:
            self.grammars.check(params.grammar)
        remaining = params.max_tokens - num_prior_output_tokens
        if remaining < 1:
            raise ValueError(f"max_tokens ({params.max_tokens}) leaves no token to generate after "
                             f"{num_prior_output_tokens} already generated")
        total = len(prompt_token_ids) + remaining
        if total > self.max_model_len:
            raise ValueError(f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({remaining}) = {total} "
                             f"exceeds the context length {self.max_model_len}")
        self._check_fits_pool(total, "prompt + max_tokens")

    def validate_embedding(self, prompt_token_ids: list[int], request_id: str = "") -> None:
        """validate() for an embedding request: the prompt alone must fit (nothing is generated)."""
        self._check_id_and_prompt(prompt_token_ids, request_id)
        if len(prompt_token_ids) > self.max_model_len:
            raise ValueError(f"input ({len(prompt_token_ids)} tokens) exceeds the context length {self.max_model_len}")
        self._check_fits_pool(len(prompt_token_ids), "input")

    def _check_id_and_prompt(self, prompt_token_ids: list[int], request_id: str) -> None:
        if request_id and (request_id in self.requests or request_id in self.held or request_id in self.reserved):
            raise ValueError(f"request id {request_id!r} is already in use")
        check_prompt(prompt_token_ids, self.model_config.vocab_size)

    def _check_fits_pool(self, num_tokens: int, what: str) -> None:
        if -(-num_tokens // self.config.block_size) > self.pool.num_blocks:
            raise ValueError(f"{what} = {num_tokens} tokens exceeds the KV pool "
                             f"({self.pool.num_blocks * self.config.block_size} tokens)")

    # --- LoRA adapters (lora.py) ------------------------------------------------------------------

    def read_adapter(self, name: str, path: str | Path) -> LoraAdapter:
        """A PEFT adapter folder or a GGUF LoRA file, loaded for this model (ModelFormatError if it does not fit);
        changes nothing, so it may run on any thread. add_adapter serves it."""
        check_lora_name(name)
        return load_adapter(name, Path(path), self.model_config, self.config.torch_dtype, self.config.device)

    def adapter_for(self, params: SamplingParams, request_id: str = "") -> LoraAdapter | None:
        """The adapter a request runs (None: the base model); ValueError for a name this node does not serve. A
        request whose KV blocks were reserved before its adapter was unloaded runs the unloaded one."""
        if params.lora is None:
            return None
        for adapter, waiting in self._retired.values():
            if adapter.name == params.lora and request_id in waiting:
                return adapter
        if params.lora not in self.adapters:
            raise UnknownAdapter(f"unknown LoRA adapter {params.lora!r}; this node serves "
                             f"{', '.join(map(repr, self.adapters)) or 'none'}")
        return self.adapters[params.lora]

    def add_adapter(self, adapter: LoraAdapter) -> None:
        """Requests may name it from now on; ValueError if its name is taken."""
        if adapter.name in self.adapters:
            raise ValueError(f"LoRA adapter {adapter.name!r} is already loaded (from {self.adapters[adapter.name].path})")
        self.adapters[adapter.name] = adapter

    def remove_adapter(self, name: str) -> None:
        """New requests may no longer name it (KeyError if unknown); the requests admitted with it run to their
        end on it (each holds it), and so do those whose KV blocks are reserved here (their prefill may be running
        it elsewhere). Its cached KV is never found again (keyed by the adapter's load_id)."""
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise KeyError(f"no LoRA adapter {name!r} is loaded")
        if self.reserved:
            self._retired[adapter.load_id] = (adapter, set(self.reserved))

    def reserve(self, request_id: str, num_tokens: int, prompt_token_ids: list[int] | None = None,
                cache_salt: str | None = None, lora: str | None = None) -> list[int] | None:
        """Decode-only: blocks for a prompt whose KV will be written from outside; None if short. Given the prompt
        (its cache salt, its LoRA adapter), its leading full blocks held in the prefix cache are taken as they are
        (`reserved_cached_tokens`): only the KV after them is to be written."""
        if request_id in self.reserved or request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        hits, namespace, load_id = self._cached_prefix(num_tokens, prompt_token_ids, cache_salt, lora)
        self.pool.acquire(hits)
        rest = self.pool.allocate(-(-num_tokens // self.config.block_size) - len(hits))
        if rest is None:
            self.pool.release(hits)
            return None
        self.reserved[request_id] = hits + rest
        if hits:
            cached = prompt_token_ids[:len(hits) * self.config.block_size]
            self._reserved_prefix[request_id] = (cached, namespace, load_id)
        return hits + rest

    def _cached_prefix(self, num_tokens: int, prompt_token_ids: list[int] | None, cache_salt: str | None,
                       lora: str | None) -> tuple[list[int], str | None, str | None]:
        """The prompt's leading cached blocks, its KV namespace and its adapter's load_id (ValueError for an
        adapter this node does not serve)."""
        if prompt_token_ids is None:
            return [], None, None
        if len(prompt_token_ids) != num_tokens:
            raise ValueError(f"the prompt has {len(prompt_token_ids)} tokens, the reservation is for {num_tokens}")
        check_cache_salt(cache_salt)
        adapter = self.adapter_for(SamplingParams(lora=lora))
        namespace, load_id = kv_namespace(cache_salt, lora), _load_id(adapter)
        if num_tokens > self.pool.num_blocks * self.config.block_size:  # cannot fit: refused below without hashing
            return [], namespace, load_id
        # the last prompt token is always sent
        return self.pool.lookup_prefix(prompt_token_ids[:-1], kv_root(namespace, load_id)), namespace, load_id

    def reserved_cached_tokens(self, request_id: str) -> int:
        """Leading prompt tokens of a reservation whose KV came from the prefix cache (not to be written)."""
        return len(self._reserved_prefix.get(request_id, ((), None))[0])

    def cancel_reservation(self, request_id: str) -> None:
        block_ids = self.reserved.pop(request_id, None)
        self._reserved_prefix.pop(request_id, None)
        if block_ids is not None:
            self.pool.release(block_ids)
        self._forget_retired(request_id)

    def _forget_retired(self, request_id: str) -> None:
        """The reservation is gone: an unloaded adapter that no reservation waits for any more is let go."""
        for load_id, (_, waiting) in list(self._retired.items()):
            waiting.discard(request_id)
            if not waiting:
                del self._retired[load_id]

    def admit_prefilled(self, request_id: str, prompt_token_ids: list[int], first_token_id: int,
                        params: SamplingParams, num_prior_output_tokens: int = 0, register_prefix: bool = True) -> None:
        """Decode-only: the reserved blocks now hold the prompt's KV; continue after first_token_id.
        register_prefix=False keeps approximate KV (a blended prefill) out of the prefix cache.
        Bad input is a ValueError that also cancels the reservation (its KV is of no use then)."""
        try:
            self._check_prefilled(request_id, prompt_token_ids, first_token_id, params, num_prior_output_tokens)
            prior = penalty_history(prompt_token_ids, [], num_prior_output_tokens)[1]
            matcher = self.matcher(params, prior + [first_token_id])  # the first token was sampled elsewhere
        except ValueError:
            self.cancel_reservation(request_id)
            raise
        adapter = self.adapter_for(params, request_id)
        block_ids = self.reserved.pop(request_id)
        cached = self._reserved_prefix.pop(request_id, ((), None, None))[0]
        self._forget_retired(request_id)
        req = Request(request_id, list(prompt_token_ids), params, self.tokenizer.eos_token_ids,
                      num_prior_output_tokens=num_prior_output_tokens, arrival_time_s=time.monotonic(), matcher=matcher,
                      adapter=adapter)
        req.block_ids, req.num_computed_tokens = block_ids, len(prompt_token_ids)
        self._track(req)
        if register_prefix:  # the blocks from the prefix cache are registered already
            req.block_hashes = [self.pool.blocks[b].hash for b in block_ids[:len(cached) // self.config.block_size]]
            self.scheduler._register_full_blocks(req)
        else:  # later blocks chain from a private salt, so none of this request's blocks is ever matched
            req.block_hashes = [os.urandom(16)] * (len(prompt_token_ids) // self.config.block_size)
        self._append_token(req, first_token_id, None)
        self.outputs.mark_sent(req)
        if not req.is_finished:
            self.scheduler.add_prefilled(req)

    def _check_prefilled(self, request_id: str, prompt_token_ids: list[int], first_token_id: int,
                         params: SamplingParams, num_prior_output_tokens: int) -> None:
        if request_id not in self.reserved:
            raise ValueError(f"no KV blocks are reserved for request {request_id!r}")
        check_prompt(prompt_token_ids, self.model_config.vocab_size)
        self._check_params(prompt_token_ids, params, request_id, num_prior_output_tokens)
        vocab = self.model_config.vocab_size
        if not 0 <= first_token_id < vocab:
            raise ValueError(f"first token id {first_token_id} is outside the vocabulary [0, {vocab})")
        num_blocks = -(-len(prompt_token_ids) // self.config.block_size)
        if len(self.reserved[request_id]) != num_blocks:
            raise ValueError(f"a {len(prompt_token_ids)}-token prompt needs {num_blocks} KV blocks; "
                             f"{len(self.reserved[request_id])} were reserved for request {request_id!r}")
        cached, namespace, load_id = self._reserved_prefix.get(request_id, ((), None, None))
        if cached and (list(prompt_token_ids[:len(cached)]) != cached or params.kv_namespace != namespace
                       or _load_id(self.adapter_for(params, request_id)) != load_id):
            raise ValueError(f"request {request_id!r} reserved its first {len(cached)} prompt tokens' KV from the "
                             "prefix cache for another prompt, cache salt or LoRA adapter")

    def matcher(self, params: SamplingParams, output_token_ids: list[int]):
        """The grammar's matcher after the output so far (None without a grammar); ValueError if it does not fit.
        Also the chunk cache's, for a blended request's first token."""
        return None if params.grammar is None else self.grammars.matcher(params.grammar, output_token_ids)

    def _track(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.outputs.start(req)

    # --- stepping ----------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def step(self, make_layer_hook: Callable[[SchedulerOutput], LayerHook | None] | None = None) -> list[RequestOutput]:
        """One engine step. make_layer_hook(plan) may return a function called after each layer
        of this step wrote its KV (the prefill node streams KV from there)."""
        self._draft()
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return self.outputs.drain()
        result = self.runner.execute(plan, make_layer_hook(plan) if make_layer_hook else None)
        self.scheduler.commit(plan)
        for chunk in result.chunks:
            samples = result.samples.get(chunk.request.request_id)
            if samples is not None:
                self._append_samples(chunk, samples)
            elif chunk.request.embedding is not None:
                self._finish(chunk.request, FinishReason.POOLED)
        return self.outputs.drain()

    def _draft(self) -> None:
        """Speculation's drafts for each decoding request (speculation.py): none under a grammar, none past its
        max_tokens (the token after the last kept draft comes too)."""
        spec = self.config.speculative
        if spec is None:
            return
        drafting = spec.drafting(len(self.scheduler.running))
        for req in self.scheduler.running:
            decoding = req.num_tokens - req.num_computed_tokens == 1 and not req.prefill_only  # embeddings are too
            limit = req.params.max_tokens - req.num_output_tokens - 1
            usable = drafting and decoding and req.matcher is None
            req.draft_token_ids = spec.propose(req.all_token_ids, limit) if usable else []

    def _append_samples(self, chunk, samples) -> None:
        """The sampled token, then one more after each draft equal to the token sampled at its place, until one
        differs or the request ends; the KV of the drafts after that is dropped (written over later)."""
        req, drafts = chunk.request, chunk.draft_token_ids
        self._append_token(req, samples[0].token_id, samples[0])
        kept = 0
        while kept < len(drafts) and not req.is_finished and samples[kept].token_id == drafts[kept]:
            kept += 1
            self._append_token(req, samples[kept].token_id, samples[kept])
        if drafts:
            req.num_computed_tokens -= len(drafts) - kept
            self.spec_counts[0] += len(drafts)
            self.spec_counts[1] += kept

    def _append_token(self, req: Request, token_id: int, sample) -> None:
        req.output_token_ids.append(token_id)
        if sample is not None and sample.logprob is not None:
            req.logprobs.append((sample.logprob, sample.top_logprobs))
        elif req.params.logprobs is not None:  # sampled elsewhere (a prefill node's first token, never re-sent):
            req.logprobs.append(None)  # keeps logprobs aligned with output_token_ids
        if sample is not None and req.matcher is not None and not req.matcher.consume_token(token_id):
            log.warning("request %s: token %d outside its grammar (%s): ended", req.request_id, token_id,
                        req.matcher.get_error())
        stopped_by_text = self.outputs.add_token(req, token_id)
        reason = self._finish_reason(req, token_id, stopped_by_text)
        if reason is not None:
            self._finish(req, reason)

    def _finish_reason(self, req: Request, token_id: int, stopped_by_text: bool) -> FinishReason | None:
        p = req.params
        if stopped_by_text or token_id in p.stop_token_ids:
            return FinishReason.STOP
        if not p.ignore_eos and token_id in req.eos_token_ids:
            return FinishReason.STOP
        if req.matcher is not None and (req.matcher.is_stopped() or req.matcher.is_error()):  # language complete
            return FinishReason.STOP
        if req.num_output_tokens >= p.max_tokens:
            return FinishReason.LENGTH
        return FinishReason.PREFILLED if req.prefill_only else None

    def _finish(self, req: Request, reason: FinishReason) -> None:
        keep = req.keep_blocks and reason == FinishReason.PREFILLED
        req.finish_reason = reason
        self.scheduler.finish(req, keep_blocks=keep)
        del self.requests[req.request_id]
        if keep:
            self.held[req.request_id] = req
        self.outputs.finish(req)

    def abort(self, request_id: str) -> bool:
        """Stops a request wherever it is and frees its blocks; False if unknown."""
        self.cancel_reservation(request_id)
        self.release(request_id)
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, FinishReason.ABORT)
        return True

    def release(self, request_id: str) -> None:
        """Prefill-only: the KV has been sent (or the send failed); give the blocks back."""
        req = self.held.pop(request_id, None)
        if req is not None:
            self.scheduler.release_blocks(req)

    def held_request(self, request_id: str) -> Request | None:
        return self.held.get(request_id)

    # --- convenience ---------------------------------------------------------------------------

    def generate(self, prompts: list[list[int] | str], params: SamplingParams | list[SamplingParams] | None = None) -> list[Completion]:
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        prompt_ids = [self._ids_of(p) for p in prompts]
        ids = [self.add_request(p, sp) for p, sp in zip(prompt_ids, params_list)]
        streams: dict[str, list[RequestOutput]] = {i: [] for i in ids}
        unfinished = set(ids)
        while unfinished:
            for out in self.step():
                streams[out.request_id].append(out)
                unfinished.discard(out.request_id) if out.finished else None
        return [collect(streams[i], p) for i, p in zip(ids, prompt_ids)]

    def embed(self, prompts: list[list[int] | str], pooling: PoolingParams | None = None) -> list[list[float]]:
        """Each prompt's embedding (a text is encoded as the tokenizer does by default)."""
        ids = [self.add_embedding(self._ids_of(p), pooling) for p in prompts]
        vectors: dict[str, list[float]] = {}
        while len(vectors) < len(ids):
            vectors.update((out.request_id, out.embedding) for out in self.step() if out.embedding is not None)
        return [vectors[i] for i in ids]

    def stream(self, prompt: list[int] | str, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        request_id = self.add_request(self._ids_of(prompt), params)
        while True:
            for out in self.step():
                if out.request_id == request_id:
                    yield out
                    if out.finished:
                        return

    def _ids_of(self, prompt: list[int] | str) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def stats(self) -> EngineStats:
        waiting, running = self.scheduler.waiting, self.scheduler.running
        pending = sum(r.num_tokens - r.num_computed_tokens for r in list(waiting) + running if r.num_computed_tokens < r.num_prompt_tokens)
        return EngineStats(len(waiting), len(running), pending, self.pool.num_blocks, self.pool.num_free,
                           len(self.reserved), len(self.held), self.config.block_size, tuple(self.adapters),
                           self._lora_requests(waiting, running), self.pool.enable_prefix_caching,
                           tuple((name, adapter.load_id) for name, adapter in self.adapters.items()),
                           *self.spec_counts, self._startup_adapter_names())

    def _startup_adapter_names(self) -> tuple[str, ...]:
        return tuple(name for name, adapter in self._startup_adapters.items() if self.adapters.get(name) is adapter)

    def _lora_requests(self, waiting, running) -> tuple[tuple[str, int, int], ...]:
        counts = {name: [0, 0] for name in self.adapters}
        for column, requests in enumerate((waiting, running)):
            for req in requests:
                if req.adapter is not None:
                    counts.setdefault(req.adapter.name, [0, 0])[column] += 1
        return tuple((name, w, r) for name, (w, r) in sorted(counts.items()))

    def kv_slots(self, block_ids: list[int], num_tokens: int, start: int = 0) -> torch.Tensor:
        """Cache slots of positions [start, num_tokens) of a block table: [num_tokens - start] long."""
        return torch.tensor(self.runner.slots(block_ids, start, num_tokens), dtype=torch.long,
                            device=self.config.device)

    def check_integrity(self) -> None:
        self.pool.check_integrity()

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used


def _load_id(adapter: LoraAdapter | None) -> str | None:
    return None if adapter is None else adapter.load_id
