"""gRPC settings shared by every server and client: message limits, keepalive, channels."""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 64 << 20

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


def aio_channel(address: str, credentials: grpc.ChannelCredentials | None = None,
                options: tuple = ()) -> grpc.aio.Channel:
    """A channel with our limits; TLS (mTLS with a client certificate) when credentials are given."""
    options = [*CHANNEL_OPTIONS, *options]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def parse_url(url: str) -> str:
    """grpc://host:port, grpcs://host:port (TLS) or host:port -> host:port."""
    address = url.removeprefix("grpcs://").removeprefix("grpc://")
    if ":" not in address or address.startswith("http"):
        raise ValueError(f"expected grpc://HOST:PORT or grpcs://HOST:PORT, got {url!r}")
    return address
