"""A 2-rank torch.distributed group per (prefill sender, decode receiver) pair, and its wire.

Formation (no global world, no `init_process_group`):

1. The decode node hosts a `TCPStore` (is_master) on its kv port.
2. A sender connects a store client to it, picks `pair_key = splitserve/kv/<sender uuid>/<gen>`
   and pushes "<pair_key> <backend>" on the store queue `JOIN_QUEUE`.
3. The receiver's acceptor thread pops it; both sides build the group on
   `PrefixStore(pair_key, store)`: sender rank 0, receiver rank 1, gloo for CPU tensors,
   NCCL for CUDA tensors. A broken group is dropped; the sender forms `<gen + 1>` next time.

The NCCL path follows the same code but has not been run yet (no GPUs where it was written).

Measured on torch 2.13 (gloo): a recv completes only inside `Work.wait` (no polling);
`abort()`/`shutdown()` do not wake a blocked recv; a wait that times out closes the pair,
which fails every pending op on both ends at once ("Application timeout caused pair closure" /
"Connection closed by peer") - `PairLink.close` uses exactly that; a dead peer process fails
pending ops within about half a second; dropping the group object closes its sockets.
"""

from __future__ import annotations

import datetime
import re
import time

import torch
from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

from splitserve.kvtransfer.wire import CHUNK_BYTES, HEADER_WORDS, LayerHeader, chunk_ranges, decode_entries

JOIN_QUEUE = "splitserve/kv/join"
STOP_TOKEN = "stop"  # pushed on JOIN_QUEUE to wake the acceptor when the receiver closes
SENDER_RANK, RECEIVER_RANK = 0, 1
HEADER_TAG, PAYLOAD_TAG, BREAK_TAG, ACK_TAG = 1, 2, 3, 4
INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JOIN_RE = re.compile(r"^(splitserve/kv/([A-Za-z0-9_.-]{1,64})/(\d{1,9})) (gloo|nccl)$")


def td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=max(seconds, 0.001))


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


def connect_store(address: str, timeout_s: float) -> TCPStore:
    host, port = split_address(address)
    return TCPStore(host, port, None, False, td(timeout_s))


def join_message(instance: str, generation: int, device: str) -> tuple[str, str]:
    """(pair_key, message a sender pushes on JOIN_QUEUE)."""
    pair_key = f"splitserve/kv/{instance}/{generation}"
    return pair_key, f"{pair_key} {backend_for(device)}"


def parse_join(message: str) -> tuple[str, str, str] | None:
    """(pair_key, sender instance, backend) of a join message; None if malformed."""
    match = _JOIN_RE.match(message)
    return None if match is None else (match.group(1), match.group(2), match.group(4))


def make_group(store: TCPStore, pair_key: str, rank: int, device: str, timeout_s: float, idle_timeout_s: float):
    """gloo: `timeout_s` bounds forming the group (every op passes its own timeout).
    NCCL connects lazily and its watchdog aborts ops older than the group timeout, so that
    one is `idle_timeout_s`; and a failed op must not tear the whole process down
    (TORCH_NCCL_ASYNC_ERROR_HANDLING=0 unless set): this code times out and aborts the group."""
    prefixed = PrefixStore(pair_key, store)
    if backend_for(device) == "gloo":
        return ProcessGroupGloo(prefixed, rank, 2, td(timeout_s))
    import os

    from torch.distributed import ProcessGroupNCCL

    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    options = ProcessGroupNCCL.Options()
    options._timeout = td(idle_timeout_s)
    return ProcessGroupNCCL(prefixed, rank, 2, options)


MAX_ACKS_OUT = 64  # receiver: ack sends kept before the older half is waited out (see PairLink._retire_acks)
ACK_RETIRE_TIMEOUT_S = 30.0


class PairLink:
    """One end of a pair group: headers, acks and chunked payloads, every wait bounded.

    gloo: the sender posts a flight's payload sends only after the receiver acked its header
    (`wait_ack` / `ack`), so every payload finds its recv posted and gloo writes it at once.
    Posted the other way round, each payload waits for a recv-ready notice that the receiver
    can only send between reads of the payload before it (measured: about half raw speed).
    NCCL has no acks (its p2p ops run in order on one stream: an early ack recv would block).

    Any exception from a method leaves the link unusable: call `close()` and form a new one.
    """

    def __init__(self, group, rank: int, device: str) -> None:
        self.group = group
        self.peer = 1 - rank
        self.device = torch.device(device)
        self.backend = backend_for(device)
        # two header buffers: the next header's recv is posted as soon as one arrives
        self._headers = [torch.zeros(HEADER_WORDS, dtype=torch.int64, device=self.device) for _ in range(2)]
        self._next_header = None  # (work, buffer) of the posted header recv
        self._scratch: torch.Tensor | None = None
        self.acks = self.backend == "gloo"
        # a header may overtake payloads: the receiver keeps a header recv posted and gloo matches by tag
        self.early_headers = self.backend == "gloo"
        self._ack_word = torch.ones(1, dtype=torch.int64)  # receiver: the (constant) ack message
        self._ack_buffer = torch.zeros(1, dtype=torch.int64)  # sender: where acks land
        self._acks_out: list = []  # receiver: ack sends not waited for yet (at most MAX_ACKS_OUT)
        self._ack_in = None  # sender: (work, buffer) of the posted ack recv
        self.closed = False

    def send_header(self, words: torch.Tensor, timeout_s: float) -> None:
        """A header message alone (int64[HEADER_WORDS], see `wire.encode_entries`)."""
        self.post_header(words).wait(td(timeout_s))

    def post_header(self, words: torch.Tensor):
        """Post a header message; the ack of a header with LAYER entries is `wait_ack`ed next."""
        if self.acks and self._ack_in is None:
            self._ack_in = self._post_ack_recv()
        return self.group.send([words.to(self.device)], self.peer, HEADER_TAG)

    def wait_ack(self, timeout_s: float) -> None:
        """Sender: wait until the receiver posted the payload recvs of the header just sent."""
        if not self.acks:
            return
        work, self._ack_in = self._ack_in, None
        work.wait(td(timeout_s))
        self._ack_in = self._post_ack_recv()

    def ack_arrived(self) -> bool:
        """Sender: the ack `wait_ack` waits for is here, so it returns at once (always True without
        acks). Looks at the ack buffer, zeroed before each recv is posted: gloo's `is_completed()`
        turns True only inside `wait()`."""
        return not self.acks or (self._ack_in is not None and self._ack_buffer[0].item() != 0)

    def _post_ack_recv(self):
        self._ack_buffer.zero_()
        return self.group.recv([self._ack_buffer], self.peer, ACK_TAG)

    def ack(self) -> None:
        """Receiver: the payload recvs of the last header are posted (never waits)."""
        if self.acks:
            if len(self._acks_out) >= MAX_ACKS_OUT:
                self._retire_acks()
            self._acks_out.append(self.group.send([self._ack_word], self.peer, ACK_TAG))

    def _retire_acks(self) -> None:
        """Waits out the older half of the ack sends: gloo reports a send complete only once it is waited
        for (`is_completed()` stays False until then), so without this the list grows by one per flight. A live
        sender read those acks long ago (it waits for each before that flight's payloads): the waits return at
        once; a peer that stopped reading makes this raise, like any other wait on the link."""
        old, self._acks_out = self._acks_out[: MAX_ACKS_OUT // 2], self._acks_out[MAX_ACKS_OUT // 2:]
        for work in old:
            work.wait(td(ACK_RETIRE_TIMEOUT_S))

    def post_payloads(self, flats: list[torch.Tensor]) -> list:
        """Post the payloads of a header's LAYER entries (each flat: uint8 [nbytes], in
        CHUNK_BYTES messages); wait with `wait_all`."""
        return [self.group.send([flat[lo:hi]], self.peer, PAYLOAD_TAG)
                for flat in flats for lo, hi in chunk_ranges(flat.numel())]

    def recv_header(self, timeout_s: float) -> list[LayerHeader]:
        """The entries of the next header message; ValueError if the peer does not speak this protocol.

        gloo: the recv for the following header is posted before returning, so the sender's
        next header never waits for this side to ask for it (gloo matches each tag on its
        own). Not on NCCL, whose p2p ops run in order on one stream: an early header recv
        would block the payload recv in front of it."""
        work, words = self._next_header or self._post_header_recv(0)
        self._next_header = None
        work.wait(td(timeout_s))
        entries = decode_entries(words.cpu())
        if self.backend == "gloo":
            self._next_header = self._post_header_recv(1 if words is self._headers[0] else 0)
        return entries

    def header_arrived(self) -> bool:
        """gloo: the next header is (at least partly) here, so `recv_header` returns at once.
        Looks at the header buffer's first word (MAGIC once written, zeroed before the recv is
        posted): gloo's `is_completed()` turns True only inside `wait()`."""
        return self._next_header is not None and self._next_header[1][0].item() != 0

    def _post_header_recv(self, index: int):
        words = self._headers[index]
        words[0] = 0
        return self.group.recv([words], self.peer, HEADER_TAG), words

    def post_payload(self, flat: torch.Tensor) -> list:
        """Post the recvs of a payload into flat (uint8 [nbytes]); wait with `wait_all`."""
        return [self.group.recv([flat[lo:hi]], self.peer, PAYLOAD_TAG) for lo, hi in chunk_ranges(flat.numel())]

    def post_drain(self, nbytes: int) -> list:
        """Post the recvs of a payload of `nbytes` to be discarded, into one reused chunk-sized buffer."""
        if self._scratch is None:
            self._scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8, device=self.device)
        return [self.group.recv([self._scratch[: hi - lo]], self.peer, PAYLOAD_TAG) for lo, hi in chunk_ranges(nbytes)]

    def close(self) -> None:
        """Break the pair: wakes every pending op on both ends with an error. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.backend == "nccl":
                self.group.abort()
            else:
                probe = torch.empty(1, dtype=torch.uint8)
                self.group.recv([probe], self.peer, BREAK_TAG).wait(td(0.001))
        except Exception:  # the expected timeout, or the pair was already broken
            pass

    def wait_all(self, works: list, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for work in works:
            work.wait(td(end - time.monotonic()))
