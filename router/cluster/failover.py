"""What the orchestrator does when a node call fails: which failures to retry, how often, how long to wait.

A request's `Progress` is the token stream the client has already received. A re-dispatch
continues it: the prompt plus those tokens go to a new pair as a fresh request whose
`num_prior_output_tokens` is the number already sent, so seeded sampling draws token n from
(seed, n) as before and max_tokens still counts every token. Nodes that fail a health check
after the failure are left out of the next routes; a decode node that refused a reservation
(RESOURCE_EXHAUSTED) is left out until no other route remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

# A node died, timed out, dropped the stream, or ran out of KV blocks: another node may do.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class NodeCallError(Exception):
    """A node call failed (or the request gave up); carries the status code for the client."""

    def __init__(self, code: grpc.StatusCode, message: str, address: str = "", call: str = ""):
        super().__init__(message)
        self.code, self.address, self.call = code, address, call


@dataclass(frozen=True)
class RetryConfig:
    """max_retries re-dispatches per request; the n-th waits backoff_s * 2**(n-1), at most max_backoff_s."""

    max_retries: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def __post_init__(self):
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s}, {self.max_backoff_s}")

    def backoff(self, retry: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))


@dataclass
class Progress:
    """One request across its attempts."""

    request_id: str
    sent: list[int] = field(default_factory=list)  # token ids the client has received
    retries: int = 0
    dead: set[str] = field(default_factory=set)  # nodes that failed a health check after a failure
    full: set[str] = field(default_factory=set)  # decode nodes that refused a reservation (cleared when nothing else is left)
    lacking: set[str] = field(default_factory=set)  # nodes that said they do not serve the request's LoRA adapter (now)
    refused: bool = False  # some decode node refused a reservation
    errors: list[str] = field(default_factory=list)

    def node_request_id(self) -> str:
        """A fresh id per attempt: a node that is slow to forget the last one must not refuse this one."""
        return self.request_id if self.retries == 0 else f"{self.request_id}.retry{self.retries}"

    def record(self, exc: NodeCallError) -> None:
        self.errors.append(f"{exc.call or 'route'} on {exc.address or '-'}: {exc.code.name}: {exc}")

    def give_up(self, last: NodeCallError) -> NodeCallError:
        """The error the client gets: a non-retryable one as it is; else UNAVAILABLE (or
        RESOURCE_EXHAUSTED when only full decode nodes stood in the way) listing the attempts."""
        if last.code not in RETRYABLE:
            return last
        code = grpc.StatusCode.RESOURCE_EXHAUSTED if self.refused and not self.dead else grpc.StatusCode.UNAVAILABLE
        return NodeCallError(code, f"request {self.request_id} failed after {len(self.errors)} attempt(s), "
                                   f"{len(self.sent)} tokens sent: " + "; ".join(self.errors), last.address, last.call)
