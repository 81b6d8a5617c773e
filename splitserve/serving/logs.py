"""Structured (key=value) logs for the services."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(service: str) -> None:
    level = os.environ.get("SPLITSERVE_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"ts=%(asctime)s level=%(levelname)s service={service} pid=%(process)d logger=%(name)s msg=%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
