"""Live progress of a run: sent, completed, failed, current completion rate, elapsed.

On a terminal the line is rewritten in place; otherwise a plain line is printed now and then.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import TextIO

RATE_WINDOW_S = 5.0


class Progress:
    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None,
                 interval_s: float | None = None, enabled: bool = True, label: str = ""):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval_s = interval_s or (0.5 if self.interactive else 5.0)
        self.enabled, self.label = enabled, label
        self.sent = self.completed = self.failed = 0
        self._done_times: deque[float] = deque()
        self._start = time.perf_counter()
        self._width = 0

    def start(self) -> None:
        self._start = time.perf_counter()

    def on_sent(self) -> None:
        self.sent += 1

    def on_done(self, success: bool) -> None:
        if success:
            self.completed += 1
        else:
            self.failed += 1
        self._done_times.append(time.perf_counter())

    def rate(self, now: float) -> float:
        """Requests finished per second over the last few seconds."""
        while self._done_times and self._done_times[0] < now - RATE_WINDOW_S:
            self._done_times.popleft()
        window = min(RATE_WINDOW_S, now - self._start)
        return len(self._done_times) / window if window > 0 else 0.0

    def line(self) -> str:
        now = time.perf_counter()
        prefix = f"[{self.label}] " if self.label else ""
        return (f"{prefix}sent {self.sent}  completed {self.completed}  failed {self.failed}  "
                f"rate {self.rate(now):.2f} req/s  elapsed {now - self._start:.1f} s")

    def render(self, final: bool = False) -> None:
        if not self.enabled:
            return
        text = self.line()
        if self.interactive:
            self._width = max(self._width, len(text))
            self.stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    async def loop(self) -> None:
        """Render every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.render()
