"""ModelRunner: turns a SchedulerOutput into tensors, runs the model, samples.

Its only input is the plan; it owns the model and the paged KV cache, no queues.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitserve.engine import native
from splitserve.engine.attention import AttentionBatch, DecodeBlocks, PagedKVCache, PrefillChunk
from splitserve.engine.lora import lora_batch
from splitserve.engine.model import CausalLM, LayerHook
from splitserve.engine.pooling import pooled_rows, record as record_pooled
from splitserve.engine.prompt_logprobs import prompt_rows, record
from splitserve.engine.request import Request
from splitserve.engine.sampler import Sample, SampleRequest, sample
from splitserve.engine.scheduler import ScheduledChunk, SchedulerOutput
from splitserve.engine.token_limits import banned_tokens, next_token_mask


@dataclass
class StepResult:
    chunks: list[ScheduledChunk]  # in the order they ran
    # request_id -> its sampled token (one more after each draft), for chunks that sample
    samples: dict[str, list[Sample]]


class ModelRunner:
    def __init__(self, model: CausalLM, cache: PagedKVCache, device="cpu", seed: int = 0):
        self.model, self.cache, self.device = model, cache, device
        self.block_size = cache.block_size
        self.sliding_window = model.cfg.sliding_window
        self.native_decode = native_decode_attention(cache, model.embed_tokens.weight.dtype, device)
        self.generator = torch.Generator().manual_seed(seed)

    def execute(self, plan: SchedulerOutput, on_layer_done: LayerHook | None = None) -> StepResult:
        # decodes (with their drafts) first; each LoRA adapter's requests together, so its rows are one run (lora.py)
        chunks = sorted(plan.chunks, key=lambda c: (not _decodes(c), c.request.params.lora or ""))
        input_ids, positions, slots = [], [], []
        logit_rows, sampled, scored = [], [], []  # rows whose logits are computed; which of them sample; prompt rows
        hidden_rows, pooled = [], []  # rows whose final hidden states embedding requests pool
        adapter_rows = []  # (adapter or None, first row, end row) of each chunk
        for chunk in chunks:
            req, start, n = chunk.request, chunk.start, chunk.num_new_tokens
            adapter_rows.append((req.adapter, len(input_ids), len(input_ids) + n))
            rows = prompt_rows(req, start, n, len(logit_rows))
            if rows is not None:
                scored.append(rows)
                logit_rows += range(len(input_ids), len(input_ids) + rows.num_rows)
            pooling = pooled_rows(req, start, n, len(hidden_rows))
            if pooling is not None:
                pooled.append(pooling)
                hidden_rows += range(len(input_ids) + pooling.start - start, len(input_ids) + pooling.end - start)
            input_ids += chunk.input_token_ids()
            positions += range(start, start + n)
            slots += self.slots(req.block_ids, start, start + n)
            if chunk.samples:  # the last row, and each draft's
                rows = 1 + len(chunk.draft_token_ids)
                sampled += range(len(logit_rows), len(logit_rows) + rows)
                logit_rows += range(len(input_ids) - rows, len(input_ids))
        batch = self._attention_batch(chunks, slots)
        input_ids, positions, logit_rows = self._long(input_ids), self._long(positions), self._long(logit_rows)
        lora = lora_batch(adapter_rows)
        if pooled:
            logits = self._pool(input_ids, positions, batch, logit_rows, hidden_rows, pooled, on_layer_done, lora)
        else:
            logits = self.model(input_ids, positions, self.cache, batch, logit_rows, on_layer_done, lora)
        for rows in scored:
            record(rows, logits)
        return StepResult(chunks, self._sample(chunks, logits[sampled] if scored else logits))

    def _pool(self, input_ids, positions, batch, logit_rows, hidden_rows, pooled, on_layer_done, lora) -> torch.Tensor:
        """A step with embedding requests: their rows' final hidden states are recorded; the logits of the
        others' rows are returned."""
        stream = self.model.residual_stream(input_ids, positions, self.cache, batch, on_layer_done, lora)
        hidden = self.model.final_hidden(stream[self._long(hidden_rows)])
        for rows in pooled:
            record_pooled(rows, hidden)
        if not len(logit_rows):
            return torch.empty(0, self.model.cfg.vocab_size, device=self.device)
        return self.model.logits(stream[logit_rows])

    def _sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> dict[str, list[Sample]]:
        """Each sampling chunk's token, and after each of its drafts the token that follows it."""
        sampling = [c for c in chunks if c.samples]
        reqs = [row for c in sampling for row in self._sample_requests(c)]
        samples = iter(sample(logits, reqs, self.generator) if reqs else [])
        return {c.request.request_id: [next(samples) for _ in range(1 + len(c.draft_token_ids))] for c in sampling}

    def _sample_requests(self, chunk: ScheduledChunk) -> list[SampleRequest]:
        """The chunk's last row, then each draft's: the drafts before a row are its history (penalties, bans, the
        seeded draw's index)."""
        req, drafts = chunk.request, chunk.draft_token_ids
        prompt, output = req.penalty_history() if req.params.penalized or req.params.bad_word_ids else ((), [])
        allowed = self._allowed(req)
        rows = []
        for i in range(1 + len(drafts)):
            history, index = output + drafts[:i], req.num_output_tokens + i
            banned = banned_tokens(req.params, index, req.eos_token_ids, history)
            rows.append(SampleRequest(req.params, index, banned, prompt, history, allowed))
        return rows

    def _allowed(self, req) -> torch.Tensor | None:
        return next_token_mask(req.params, req.matcher, self.model.cfg.vocab_size, self.device)

    def slots(self, block_ids: list[int], start: int, end: int) -> list[int]:
        size = self.block_size
        return [block_ids[p // size] * size + p % size for p in range(start, end)]

    def _attention_batch(self, chunks: list[ScheduledChunk], slots: list[int]) -> AttentionBatch:
        decodes = [c for c in chunks if _decodes(c)]
        # one query row per token: a decode's, and each draft's at its own position (it sees the drafts before it)
        rows = [(c.request, p) for c in decodes for p in range(c.start, c.start + c.num_new_tokens)]
        blocks = self._decode_blocks(rows) if rows and self.native_decode else None
        slots_d, mask = self._decode_tables(rows) if rows and blocks is None else (None, None)
        prefills, offset = [], len(rows)
        for chunk in chunks[len(decodes):]:
            prefills.append(self._prefill_chunk(chunk, offset))
            offset += chunk.num_new_tokens
        return AttentionBatch(self._long(slots), len(rows), slots_d, mask, prefills, blocks)

    def _block_tables(self, rows: list[tuple[Request, int]]) -> torch.Tensor:
        """[Bd, W]: each decode row's blocks up to its query's, padded with block 0."""
        width = max(-(-(position + 1) // self.block_size) for _, position in rows)
        return self._long([req.block_ids[:width] + [0] * (width - min(width, len(req.block_ids))) for req, _ in rows])

    def _decode_blocks(self, rows: list[tuple[Request, int]]) -> DecodeBlocks:
        positions = self._long([position for _, position in rows])
        return DecodeBlocks(self._block_tables(rows), positions, self.sliding_window or 0)

    def _decode_tables(self, rows: list[tuple[Request, int]]):
        size = self.block_size
        tables = self._block_tables(rows)
        offsets = torch.arange(size, device=self.device)
        num_keys = max(position + 1 for _, position in rows)  # L: the longest context; shorter ones are masked
        slots = (tables[:, :, None] * size + offsets).view(len(rows), -1)[:, :num_keys].flatten()  # [Bd * L]
        if self._all_keys_visible(rows, num_keys):
            return slots, None  # SDPA without a mask: its fastest path (batch 1, equal lengths)
        key_pos = torch.arange(num_keys, device=self.device)
        query_pos = self._long([position for _, position in rows])[:, None]
        mask = self._visible(query_pos, key_pos)  # [Bd, L]
        return slots, mask[:, None, None, :]

    def _all_keys_visible(self, rows: list[tuple[Request, int]], num_keys: int) -> bool:
        window_ok = self.sliding_window is None or num_keys <= self.sliding_window
        return window_ok and all(position + 1 == num_keys for _, position in rows)

    def _prefill_chunk(self, chunk: ScheduledChunk, offset: int) -> PrefillChunk:
        start, n = chunk.start, chunk.num_new_tokens
        fresh = start == 0 and (self.sliding_window is None or n <= self.sliding_window)
        if fresh:
            return PrefillChunk(offset, n, None, None)
        context = self._long(self.slots(chunk.request.block_ids, 0, start + n))
        query_pos = torch.arange(start, start + n, device=self.device)[:, None]
        mask = self._visible(query_pos, torch.arange(start + n, device=self.device))
        return PrefillChunk(offset, n, context, mask)

    def _visible(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        visible = key_pos[None, :] <= query_pos
        if self.sliding_window is not None:
            visible &= key_pos[None, :] > query_pos - self.sliding_window
        return visible

    def _long(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def native_decode_attention(cache: PagedKVCache, model_dtype: torch.dtype, device) -> bool:
    """Whether decodes go to native.py's attention: an fp32 model on CPU, its cache in fp32, float16 or bfloat16, on a
    machine with the kernels."""
    return torch.device(device).type == "cpu" and model_dtype == torch.float32 and \
        cache.k[0].dtype in (torch.float32, torch.float16, torch.bfloat16) and native.attention_ops() is not None


def _decodes(chunk: ScheduledChunk) -> bool:
    """A decode's chunk: one token, or one and its drafts (each row then attends as a decode does)."""
    return chunk.num_new_tokens == 1 or bool(chunk.draft_token_ids)
