"""API keys: who may call the router.

Keys come from `--api-keys-file` (one per line; blank lines and `#` comments ignored) and from
the environment variable SPLITSERVE_API_KEYS (comma-separated). No keys from either: auth is
off. Clients send `Authorization: Bearer KEY` (an HTTP header, or gRPC metadata
`authorization`; over HTTP also Anthropic's `x-api-key: KEY`). Only SHA-256 digests of the keys are
kept, and a presented key is checked
by looking up its digest, so the time taken says nothing about how close a wrong key was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_VAR = "SPLITSERVE_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def authorization(headers) -> str | None:
    """The request's `Authorization` header, or Anthropic's `x-api-key: KEY` as `Bearer KEY`."""
    value = headers.get("authorization")
    if value is None and headers.get("x-api-key") is not None:
        value = f"Bearer {headers.get('x-api-key')}"
    return value


class ApiKeys:
    def __init__(self, keys: list[str] = ()):
        bad = [k for k in keys if not k or any(c.isspace() for c in k)]
        if bad:
            raise ValueError(f"API keys must be non-empty and contain no spaces ({len(bad)} bad)")
        self._digests = frozenset(_digest(k) for k in keys)

    @classmethod
    def from_sources(cls, path: str | Path | None = None, env: dict | None = None) -> "ApiKeys":
        env = os.environ if env is None else env
        keys = [k.strip() for k in env.get(ENV_VAR, "").split(",") if k.strip()]
        if path:
            try:
                lines = Path(path).read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"--api-keys-file: cannot read {path}: {exc.strerror}") from exc
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def allows_headers(self, headers) -> bool:
        """`allows` for an HTTP request's headers: `Authorization: Bearer KEY`, or Anthropic's `x-api-key: KEY`
        (what the anthropic client sends to /v1/messages)."""
        return self.allows(authorization(headers))

    def caller(self, headers) -> str:
        """Who an (allowed) HTTP request comes from, for what it owns (files, batches): its key's digest in
        hex, or "" with auth off (one owner)."""
        if not self._digests:
            return ""
        _, _, key = (authorization(headers) or "").partition(" ")
        return _digest(key.strip()).hex()

    def allows(self, authorization: str | None) -> bool:
        """True when auth is off, or `authorization` is 'Bearer <a known key>'."""
        if not self._digests:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and _digest(key.strip()) in self._digests
