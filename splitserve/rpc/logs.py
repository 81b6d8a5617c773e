"""JSON logs for the services: one object per line, carrying the request id end to end.

The request id is a contextvar: a gRPC handler sets it (`request_scope(rid)`) and every line
logged in that task (and the tasks it starts) carries it; code on other threads passes it
explicitly (`extra={"request_id": rid}`). The router sends its id to the nodes in every call,
so one id follows a request through router, prefill and decode logs. Other `extra` fields
(node, role, pod, ...) become fields of the object.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _timestamp(record.created), "level": record.levelname, "service": self.service,
                 "pid": record.process, "logger": record.name, "msg": record.getMessage()}
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and k != "request_id")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


@contextlib.contextmanager
def request_scope(rid: str):
    """Lines logged inside carry rid (contextvars: per asyncio task, so concurrent requests do not mix)."""
    token = request_id.set(rid)
    try:
        yield
    finally:
        request_id.reset(token)


def setup_logging(service: str) -> None:
    level = os.environ.get("SPLITSERVE_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=level, handlers=[handler], force=True)
