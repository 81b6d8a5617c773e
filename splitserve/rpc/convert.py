"""protobuf <-> engine dataclasses, shared by the node and router boundary modules."""

from __future__ import annotations

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.engine import SamplingParams
from splitserve.node_api import KVTarget


def sampling_from_proto(msg: common_pb2.SamplingParams, with_stop_strings: bool = False) -> SamplingParams:
    """Raises ValueError (-> INVALID_ARGUMENT) for values out of range. `with_stop_strings`: the router's
    reading, with the stop strings and the other text options (nodes make token ids, not text)."""
    return SamplingParams(
        max_tokens=msg.max_tokens,
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p or 1.0,
        min_p=msg.min_p,
        seed=msg.seed if msg.HasField("seed") else None,
        stop_token_ids=tuple(msg.stop_token_ids),
        stop=tuple(msg.stop) if with_stop_strings else (),
        include_stop_str_in_output=with_stop_strings and msg.include_stop_str_in_output,
        skip_special_tokens=not (with_stop_strings and msg.keep_special_tokens),
        ignore_eos=msg.ignore_eos,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        min_tokens=msg.min_tokens,
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        repetition_penalty=msg.repetition_penalty if msg.HasField("repetition_penalty") else 1.0,
        logit_bias=dict(msg.logit_bias),
        prompt_logprobs=msg.prompt_logprobs if msg.HasField("prompt_logprobs") else None,
        grammar=msg.grammar if msg.HasField("grammar") else None,
        priority=msg.priority,
        allowed_token_ids=tuple(msg.allowed_token_ids),
        bad_words=tuple(msg.bad_words) if with_stop_strings else (),
        bad_word_ids=tuple(tuple(seq.token_ids) for seq in msg.bad_word_ids),
        cache_salt=msg.cache_salt if msg.HasField("cache_salt") else None,
        lora=msg.lora if msg.HasField("lora") else None,
    )


def sampling_to_proto(p: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        max_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
        min_p=p.min_p, include_stop_str_in_output=p.include_stop_str_in_output,
        keep_special_tokens=not p.skip_special_tokens, stop_token_ids=list(p.stop_token_ids), stop=list(p.stop),
        ignore_eos=p.ignore_eos, min_tokens=p.min_tokens, presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty, logit_bias=dict(p.logit_bias), priority=p.priority,
        allowed_token_ids=list(p.allowed_token_ids), bad_words=list(p.bad_words),
        bad_word_ids=[common_pb2.TokenSequence(token_ids=list(ids)) for ids in p.bad_word_ids],
    )
    if p.repetition_penalty != 1.0:
        msg.repetition_penalty = p.repetition_penalty
    if p.seed is not None:
        msg.seed = p.seed
    if p.logprobs is not None:
        msg.logprobs = p.logprobs
    if p.prompt_logprobs is not None:
        msg.prompt_logprobs = p.prompt_logprobs
    if p.grammar is not None:
        msg.grammar = p.grammar
    if p.cache_salt is not None:
        msg.cache_salt = p.cache_salt
    if p.lora is not None:
        msg.lora = p.lora
    return msg


def kv_target_to_proto(target: KVTarget) -> node_pb2.KVTarget:
    return node_pb2.KVTarget(node_id=target.node_id, kv_address=target.kv_address, transport=target.transport,
                             kv_dtype=target.kv_dtype)


def kv_target_from_proto(msg: node_pb2.KVTarget) -> KVTarget:
    return KVTarget(msg.node_id, msg.kv_address, msg.transport, msg.kv_dtype)
