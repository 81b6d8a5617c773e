"""The process's open-files limit, and what an asyncio server does when it runs out of descriptors.

Every connection a service holds is a file descriptor. Processes often start with a soft limit of
1,024 (the Linux default, which systemd services and some container runtimes keep) while the hard
limit is far higher: a router under a burst of a thousand clients then fails to accept connections. Each
service raises its soft limit to its hard one (at most TARGET) when it starts, as vLLM's API
server does.

When the limit is reached anyway, Python 3.11's asyncio logs every failed accept with its
traceback and, within one wake-up, retries up to the listen backlog (uvicorn's: 2,048) times
(CPython gh-151615): tens of thousands of traceback lines, and a router event loop busy formatting
them instead of serving (measured: 2,000 simultaneous streaming clients against a 1,024 limit got their last 429
after 8-28 s, with the limit raised after 2.0-2.5 s). `AcceptErrorLog` replaces that with one line per
interval and a count.
"""

from __future__ import annotations

import logging
import resource
import time

log = logging.getLogger(__name__)

TARGET = 65536
LOW = 4096  # below this a router may not hold a burst of clients: it says so at startup
ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)


def raise_open_files_limit(target: int = TARGET) -> int:
    """Raises the soft RLIMIT_NOFILE towards min(hard, target); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, exc)
        return soft
    return want


class AcceptErrorLog:
    """An event loop exception handler: a failed accept for lack of descriptors is counted
    (`on_error`) and logged at most once per `interval_s`, without a traceback; anything else goes
    to the loop's default handler."""

    def __init__(self, on_error=lambda: None, interval_s: float = 10.0, clock=time.monotonic):
        self.on_error, self.interval_s, self.clock = on_error, interval_s, clock
        self.unlogged = 0
        self.last_logged = -float("inf")

    def __call__(self, loop, context: dict) -> None:
        if context.get("message") != ACCEPT_ERROR:
            loop.default_exception_handler(context)
            return
        self.on_error()
        self.unlogged += 1
        now = self.clock()
        if now - self.last_logged < self.interval_s:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning("out of file descriptors: %d failed accepts of connections (%s; open-files limit %d); "
                    "clients wait in the listen queue meanwhile: raise the limit (ulimit -n) or lower the load",
                    self.unlogged, context.get("exception"), soft)
        self.unlogged, self.last_logged = 0, now
