"""gRPC settings shared by every server and client: message limits, keepalive, channels, and the
server interceptor that answers malformed request bytes with INVALID_ARGUMENT."""

from __future__ import annotations

import contextlib
import inspect

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
    # Calls that arrived and wait for the (Python) server to take them: past 1,000 (gRPC's default) gRPC
    # cancels some at random (the client sees CANCELLED), which a burst of clients reaches within a
    # second. Load is shed by the router's --max-queue instead (RESOURCE_EXHAUSTED with retry-after).
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
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


class MessageGuard(grpc.aio.ServerInterceptor):
    """Parses each request itself, so bytes that are not the method's message (bad wire format,
    invalid UTF-8 in a string field) get INVALID_ARGUMENT; grpc.aio would answer UNKNOWN, as for
    a bug. First in a server's interceptors, so the others see parsed messages. Handlers it does
    not know how to wrap (sync ones, stream-stream, streams written with context.write) are left as
    they are."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        parse = handler.request_deserializer if handler is not None else None
        if parse is None:
            return handler
        serialize = handler.response_serializer
        if inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, parse), None, serialize)
        if inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(_unary_stream(handler.unary_stream, parse), None, serialize)
        if inspect.iscoroutinefunction(handler.stream_unary):
            return grpc.stream_unary_rpc_method_handler(_stream_unary(handler.stream_unary, parse), None, serialize)
        return handler


async def _parse(parse, raw: bytes, context: grpc.aio.ServicerContext):
    try:
        return parse(raw)
    except Exception as exc:  # DecodeError; invalid UTF-8 in a string field
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {exc}")


def _unary(behavior, parse):
    async def parsed(raw: bytes, context):
        return await behavior(await _parse(parse, raw, context), context)
    return parsed


def _unary_stream(behavior, parse):
    async def parsed(raw: bytes, context):
        async with contextlib.aclosing(behavior(await _parse(parse, raw, context), context)) as responses:
            async for response in responses:
                yield response
    return parsed


def _stream_unary(behavior, parse):
    async def requests(raws, context):
        async for raw in raws:
            yield await _parse(parse, raw, context)

    async def parsed(raws, context):
        return await behavior(requests(raws, context), context)
    return parsed
