"""The gRPC front's gate: API key, load shedding and deadline around every Router call.

A server interceptor, so the servicer stays about requests only. For methods of the Router
service (health and reflection stay open for probes): metadata `authorization: Bearer KEY`
or UNAUTHENTICATED; then, for `Generate` and `Embed`, a slot from Admission or RESOURCE_EXHAUSTED
with trailing metadata `retry-after` (seconds); then the call runs under the request's deadline
(the router's `--request-timeout-s` or the client's, whichever is sooner) or ends with
DEADLINE_EXCEEDED. A client that goes away cancels the call, which closes the stream and
cancels the node calls.
"""

from __future__ import annotations

import grpc

from splitserve.api.v1 import router_pb2
from router.front.admission import Admission, DeadlineExceeded, Overloaded, bounded, within
from router.front.auth import ApiKeys

ROUTER_PREFIX = "/" + router_pb2.DESCRIPTOR.services_by_name["Router"].full_name + "/"
UNAUTHENTICATED_MESSAGE = "missing or invalid API key: send metadata 'authorization: Bearer KEY'"


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return value
    return None


class RouterGuard(grpc.aio.ServerInterceptor):
    def __init__(self, api_keys: ApiKeys, admission: Admission, count_error=lambda code: None):
        self.api_keys = api_keys
        self.admission = admission
        self.count_error = count_error  # (grpc.StatusCode) -> None: the metrics' errors by code

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(ROUTER_PREFIX):
            return handler
        authorized = self.api_keys.allows(_authorization(details))
        kwargs = dict(request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream, authorized), **kwargs)
        if handler.unary_unary is not None:
            admitted = details.method == ROUTER_PREFIX + "Embed"  # work for the nodes; Abort is not
            guarded = self._unary(handler.unary_unary, authorized, admitted)
            return grpc.unary_unary_rpc_method_handler(guarded, **kwargs)
        return handler if authorized else None

    async def _refuse(self, context, code: grpc.StatusCode, message: str, trailing_metadata=()) -> None:
        self.count_error(code)
        await context.abort(code, message, trailing_metadata=trailing_metadata)

    def _unary(self, behavior, authorized: bool, admitted: bool):
        async def guarded(request, context):
            if not authorized:
                await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            if not admitted:
                return await behavior(request, context)
            with await self._slot(context):
                try:
                    return await within(behavior(request, context), self.admission.deadline(context.time_remaining()))
                except DeadlineExceeded as exc:
                    await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))

        return guarded

    async def _slot(self, context):
        """A slot from Admission, or RESOURCE_EXHAUSTED with `retry-after`."""
        try:
            return self.admission.admit()
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                trailing_metadata=(("retry-after", exc.retry_after),))

    def _stream(self, behavior, authorized: bool):
        async def guarded(request, context):
            if not authorized:
                await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            with await self._slot(context):
                try:
                    async for response in bounded(behavior(request, context),
                                                  self.admission.deadline(context.time_remaining())):
                        yield response
                except DeadlineExceeded as exc:
                    await self._refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))

        return guarded
