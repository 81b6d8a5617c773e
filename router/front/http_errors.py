"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

`from_exception` maps what the router raises (bad input, overload, no nodes, a failed node
call, a passed deadline) to the status and body a client of OpenAI's API expects.
"""

from __future__ import annotations

import grpc
from fastapi.responses import JSONResponse

from router.front.admission import DeadlineExceeded, Overloaded
from router.front.openai_models import InvalidRequest
from router.cluster.orchestrator import NodeCallError
from router.cluster.policies import NoRoute
from router.redis_client import StoreUnavailable

# gRPC status of a failed node call -> (HTTP status, error type)
_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),  # a LoRA adapter unloaded as the request came
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


class ClientGone(Exception):
    """The HTTP client disconnected before its response was ready."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def unauthorized() -> ApiError:
    return ApiError(401, "missing or invalid API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def from_exception(exc: BaseException) -> ApiError:
    """The ApiError for an exception the router raises; 500 for anything unexpected."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param)
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    if isinstance(exc, Overloaded):
        return ApiError(429, str(exc), "rate_limit_exceeded", code="overloaded",
                        headers={"Retry-After": exc.retry_after})
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, str(exc), "service_unavailable", code=exc.code)
    if isinstance(exc, NoRoute):
        return ApiError(503, str(exc), "service_unavailable", code="no_healthy_nodes")
    if isinstance(exc, ClientGone):
        return ApiError(499, "client closed the request", "client_closed_request")
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, str(exc), "timeout", code="deadline_exceeded")
    if isinstance(exc, NodeCallError):
        status, type_ = _GRPC_TO_HTTP.get(exc.code, (500, "internal_error"))
        return ApiError(status, str(exc), type_, code=exc.code.name.lower())
    return ApiError(500, "internal error", "internal_error")
