"""Hypothesis strategies for hostile requests: raw bytes, protobuf fields with hostile values."""

from __future__ import annotations

from hypothesis import strategies as st

from splitserve.api.v1 import common_pb2, router_pb2

UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
# small values (valid requests stay short) or far out of range; never a long valid generation
max_tokens = st.one_of(st.integers(0, 6), st.sampled_from([2049, 5000, 2**31, UINT32_MAX]))
uint32 = st.one_of(st.integers(0, 8), st.sampled_from([1023, 1024, 2**31, UINT32_MAX]), st.integers(0, UINT32_MAX))
uint64 = st.one_of(st.integers(0, 8), st.sampled_from([2**63 - 1, 2**63, UINT64_MAX]), st.integers(0, UINT64_MAX))
float32 = st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1e-45, 1e-38, 1e-30, 3.4e38, -1.0, 1.0, 0.5]))
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # protobuf strings cannot hold surrogates
request_ids = st.one_of(st.just(""), text, st.sampled_from(["x" * 129, "y" * 257, "tab\there", "nul\x00"]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A wire-type-2 field (string, bytes or message) holding payload."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


invalid_utf8 = st.one_of(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]),
                         st.binary(min_size=1, max_size=16).map(lambda b: b"\xfe" + b))


@st.composite
def bad_string_fields(draw) -> bytes:
    """Fields 1-8 as length-delimited invalid UTF-8: a bad string wherever the field is a string."""
    fields = draw(st.lists(st.tuples(st.integers(1, 8), invalid_utf8), min_size=1, max_size=3))
    return b"".join(length_delimited(f, payload) for f, payload in fields)


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """valid with a few bytes flipped, then maybe truncated."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


VALID_GENERATE = router_pb2.GenerateRequest(
    prompt="hello", documents=["a passage"], sampling=common_pb2.SamplingParams(max_tokens=2, stop=["x"])
).SerializeToString()
raw_bytes = st.one_of(st.binary(max_size=64), bad_string_fields(), mutated(VALID_GENERATE),
                      st.tuples(st.just(VALID_GENERATE), bad_string_fields()).map(b"".join))

sampling = st.builds(
    common_pb2.SamplingParams, max_tokens=max_tokens, temperature=float32, top_k=uint32, top_p=float32,
    seed=st.none() | uint64, stop_token_ids=st.lists(uint32, max_size=3),
    stop=st.one_of(st.lists(text, max_size=4), st.lists(st.just(""), min_size=1, max_size=20), st.just(["s"] * 17)),
    ignore_eos=st.booleans(), logprobs=st.none() | uint32, min_tokens=uint32)
token_ids = st.one_of(st.lists(uint32, max_size=20), st.integers(2040, 3000).map(lambda n: [7] * n))
documents = st.one_of(st.lists(text, max_size=4), st.integers(65, 3000).map(lambda n: ["doc"] * n),
                      st.just(["word " * 2500]))
chat = st.lists(st.builds(router_pb2.ChatMessage, role=st.one_of(text, st.sampled_from(["user", "system"])),
                          content=text), max_size=3).map(lambda m: router_pb2.ChatMessages(messages=m))


@st.composite
def generate_requests(draw) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(request_id=draw(request_ids), sampling=draw(sampling),
                                         documents=draw(documents))
    kind = draw(st.sampled_from(["prompt", "ids", "chat", "none", "huge prompt"]))
    if kind == "prompt":
        request.prompt = draw(text)
    elif kind == "ids":
        request.prompt_token_ids.ids.extend(draw(token_ids))
    elif kind == "chat":
        request.chat.CopyFrom(draw(chat))
    elif kind == "huge prompt":
        request.prompt = "many words " * draw(st.integers(1100, 4000))
    return request
