"""The KV transfer interface: what moves, the named states, and the two roles.

One transfer moves one request's KV cache from a prefill node to a decode node, layer by
layer. The payload of one layer is a contiguous tensor

    kv: [2, num_tokens, num_kv_heads, head_dim]   (kv[0] = K after RoPE, kv[1] = V)

in the model dtype, on CPU (gloo, grpc) or CUDA (NCCL). Its life on each side:

    sender   (prefill):  begin -> send_layer x num_layers -> finish      PENDING -> SENDING -> DONE | FAILED
    receiver (decode):   expect -> write_layer x num_layers (callback)   RESERVED -> RECEIVING -> DONE | FAILED

The decode node calls `expect` when it has reserved blocks for the request; that must happen
before the prefill node calls `begin` (the router's Reserve RPC precedes the Prefill RPC).
Both sides poll: no callbacks into the services except `write_layer`. A transfer that is not
DONE within `TransferConfig.timeout_s` of `begin` / `expect` becomes FAILED, and so does one
whose peer dies; FAILED and aborted transfers never call `write_layer` again, so the decode
node may free the request's blocks as soon as it sees FAILED or has called `abort`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_REQUEST_ID_CHARS = 256
MAX_DIM = 1 << 24  # sanity bound on every size in a meta

WriteLayer = Callable[[int, torch.Tensor], None]
# (layer, kv, seed) -> writes the layer like WriteLayer and returns the MULSUM_64 checksum of kv's
# bytes with that seed, hashed while copying (`pool_copy.scatter_checksummed`); None: written, not hashed
WriteHashed = Callable[[int, torch.Tensor, int], "int | None"]


class TransferError(Exception):
    """A transfer ended FAILED; raised by the code that waits on it (backends report through poll)."""


class SendState(enum.Enum):
    PENDING = "pending"  # begun, nothing on the wire yet
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class RecvState(enum.Enum):
    RESERVED = "reserved"  # expected, no layer arrived yet
    RECEIVING = "receiving"
    DONE = "done"
    FAILED = "failed"


FINAL_SEND_STATES = (SendState.DONE, SendState.FAILED)
FINAL_RECV_STATES = (RecvState.DONE, RecvState.FAILED)


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class TransferMeta:
    """What both sides agree on before any byte moves (from the model config and the prompt)."""

    request_id: str
    num_layers: int
    num_tokens: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    checksum: bool = True  # verify a 64-bit hash of every layer on receive (see `checksum`)

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not 0 < len(self.request_id) <= MAX_REQUEST_ID_CHARS:
            raise ValueError(f"request_id must be a non-empty str of at most {MAX_REQUEST_ID_CHARS} chars")
        for name in ("num_layers", "num_tokens", "num_kv_heads", "head_dim"):
            _check_range(name, getattr(self, name), 1, MAX_DIM)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.checksum, bool):
            raise ValueError("checksum must be a bool")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def layer_shape(self) -> tuple[int, int, int, int]:
        return (2, self.num_tokens, self.num_kv_heads, self.head_dim)

    @property
    def layer_nbytes(self) -> int:
        return 2 * self.num_tokens * self.num_kv_heads * self.head_dim * self.torch_dtype.itemsize

    @property
    def total_nbytes(self) -> int:
        return self.num_layers * self.layer_nbytes


@dataclass(frozen=True)
class TransferConfig:
    """Settings shared by every backend (from the node's flags)."""

    timeout_s: float = 30.0  # whole transfer, from begin() / expect()
    connect_timeout_s: float = 10.0  # reaching the peer and forming a pair group
    idle_timeout_s: float = 3600.0  # torch: an idle pair group closes itself after this
    device: str = "cpu"  # torch: "cpu" -> gloo, "cuda[:i]" -> NCCL
    grpc_chunk_bytes: int = 1 << 20  # grpc: bytes per KVChunk message
    max_layer_bytes: int = 1 << 32  # receiver: larger claimed layers break the pair
    history: int = 4096  # transfers remembered for poll()/info(): the oldest finished go first, active ones never

    def __post_init__(self) -> None:
        for name in ("timeout_s", "connect_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 7 * 86400:
                raise ValueError(f"{name} must be a number of seconds in (0, 604800], got {value!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {self.device!r}")
        _check_range("grpc_chunk_bytes", self.grpc_chunk_bytes, 1024, 64 << 20)
        _check_range("max_layer_bytes", self.max_layer_bytes, 1, 1 << 40)
        _check_range("history", self.history, 1, 1 << 20)


@dataclass(frozen=True)
class TransferInfo:
    """One transfer as seen by one side; `reason` says why it FAILED (empty otherwise)."""

    request_id: str
    state: SendState | RecvState
    reason: str
    num_layers_done: int
    num_bytes: int
    elapsed_s: float  # begin/expect -> final state (or now)
    ended_at: float | None = None  # time.monotonic() of the final state


class KVSender(ABC):
    """Prefill side: streams requests' KV to ONE decode node (one instance per destination).

    Called by the prefill worker. `send_layer` only enqueues; a background thread of the
    sender moves the bytes, so the worker computes layer l+1 while layer l is on the wire.
    Layers of one request are sent in order; requests to the same destination share the
    transport in the order their layers were enqueued.
    """

    @property
    @abstractmethod
    def device(self) -> str:
        """The device `send_layer` takes tensors on ("cpu", "cuda[:i]")."""

    @abstractmethod
    def begin(self, meta: TransferMeta) -> None:
        """Start a transfer (state PENDING). ValueError if the request id is already active."""

    @abstractmethod
    def send_layer(self, request_id: str, layer: int, kv: torch.Tensor, checksum: int | None = None) -> None:
        """Enqueue layer `layer` (0, 1, ... in order) of shape `meta.layer_shape`, `meta.dtype`.

        `checksum`: the layer's `ChecksumKind.MULSUM_64` value seeded by
        `wire.checksum_seed(request_id, layer)`, where the caller computed it while copying the
        layer (`pool_copy.gather_checksummed`); without it the sender hashes the layer itself.
        Ignored when the transfer is not checksummed.

        The sender keeps a reference to `kv` (no copy): the caller must not modify it until
        the request reaches a final state; it may drop its own reference at once. ValueError
        on a wrong shape, dtype, device, order or a non-contiguous tensor; KeyError for an
        unknown request; a no-op once the request FAILED or was aborted.
        """

    @abstractmethod
    def finish(self, request_id: str) -> None:
        """No more layers. ValueError if layers are missing. DONE follows once all were
        delivered: torch - every layer handed to the peer's transport (the decode node's own
        state says whether it accepted them); grpc - the decode node replied that it wrote them."""

    @abstractmethod
    def poll(self, request_id: str) -> SendState:
        """Current state, never blocks. KeyError for unknown (or long forgotten) requests."""

    @abstractmethod
    def wait(self, request_id: str, timeout_s: float) -> SendState:
        """Block until a final state or `timeout_s`; returns the state then."""

    @abstractmethod
    def info(self, request_id: str) -> TransferInfo:
        """State, failure reason, progress and timing (for logs and metrics)."""

    @abstractmethod
    def abort(self, request_id: str) -> None:
        """Drop queued layers and mark FAILED ("aborted"); tells the peer when the backend can.
        A no-op for final or unknown requests."""

    @abstractmethod
    def close(self) -> None:
        """Fail everything still active, stop the thread, release the transport. Idempotent."""


class KVReceiver(ABC):
    """Decode side: accepts KV for reserved requests from any number of prefill nodes.

    `address` is what the prefill node needs to reach it ("host:port"). Layers are handed to
    the `write_layer` given to `expect`, called in layer order from a thread of the receiver
    with a `kv` tensor that is only valid during the call (the receiver reuses the buffer):
    copy it (on CUDA: enqueue the copy on the current stream before returning). It must not
    call back into the receiver.
    Layers that do not match a live reservation (unknown request, sizes that differ from the
    meta, out of order, bad checksum) are drained and discarded, and the reservation if any
    becomes FAILED with a reason; they never crash the receiver or allocate beyond
    `max_layer_bytes`.
    """

    @property
    @abstractmethod
    def address(self) -> str:
        """"host:port" senders connect to (empty if the transport is served elsewhere)."""

    @abstractmethod
    def expect(self, meta: TransferMeta, write_layer: WriteLayer, write_hashed: WriteHashed | None = None) -> None:
        """Reserve a transfer (state RESERVED). ValueError if the request id is already active.
        `write_hashed`, where given, writes the layers that arrive with a MULSUM_64 checksum in
        place of `write_layer` (the receiver does not hash them again)."""

    @abstractmethod
    def poll(self, request_id: str) -> RecvState:
        """Current state (applies the timeout). KeyError for unknown requests."""

    @abstractmethod
    def info(self, request_id: str) -> TransferInfo:
        """State, failure reason, progress and timing."""

    @abstractmethod
    def when_ended(self, request_id: str, callback: Callable[[RecvState], None]) -> None:
        """Call `callback(state)` once, when the transfer is DONE or FAILED: at once if it already
        is, else on the thread that ends it (it must not block or call back into the receiver).
        A timeout is applied only by `poll`/`info`, so waiters bound their own wait. KeyError for
        unknown requests."""

    @abstractmethod
    def abort(self, request_id: str) -> None:
        """Mark FAILED ("aborted"); when it returns, write_layer is not running for this request
        and will not be called again, so its blocks may be freed. A no-op for final or unknown
        requests."""

    @abstractmethod
    def close(self) -> None:
        """Fail everything still active, stop threads and the listener. Idempotent."""
