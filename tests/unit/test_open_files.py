"""`AcceptErrorLog`: asyncio's failed accepts counted, logged once per interval; other errors untouched."""

from __future__ import annotations

import logging

from splitserve.runtime.open_files import ACCEPT_ERROR, AcceptErrorLog


class Loop:
    def __init__(self):
        self.default = []

    def default_exception_handler(self, context):
        self.default.append(context)


def test_accept_errors_are_counted_and_logged_once_per_interval(caplog):
    now = [100.0]
    counted = []
    handler = AcceptErrorLog(lambda: counted.append(1), interval_s=10.0, clock=lambda: now[0])
    loop = Loop()
    failure = {"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")}
    with caplog.at_level(logging.WARNING):
        for t in (100.0, 100.1, 105.0, 110.5, 111.0):
            now[0] = t
            handler(loop, failure)
    lines = [r.getMessage() for r in caplog.records]
    assert len(counted) == 5 and loop.default == []
    assert len(lines) == 2 and lines[0].startswith("out of file descriptors: 1 failed")
    assert lines[1].startswith("out of file descriptors: 3 failed")  # the two unlogged ones and this


def test_other_loop_errors_go_to_the_default_handler():
    loop = Loop()
    context = {"message": "Task exception was never retrieved", "exception": ValueError("x")}
    AcceptErrorLog()(loop, context)
    assert loop.default == [context]
