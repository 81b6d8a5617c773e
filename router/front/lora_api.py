"""vLLM's runtime LoRA updating over HTTP (router/cluster/lora_admin.py does the work):

    POST /v1/load_lora_adapter    {"lora_name": "sql", "lora_path": "/models/adapters/sql"}
    POST /v1/unload_lora_adapter  {"lora_name": "sql"}

Served with the router's --allow-runtime-lora (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING), behind the API key; the
path is a PEFT folder or a GGUF LoRA file on the nodes' disks. Success answers vLLM's text; a bad name, a taken name
or an adapter that does not fit is a 400, an unknown name on unload a 404. An unloaded adapter's requests in flight
run to their end. A node that joins or restarts later gets the runtime adapters loaded (lora_admin.py), by any
router replica when they share a --lora-store in Redis.
"""

from __future__ import annotations

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from router.cluster.lora_admin import LOAD_TIMEOUT_S, LoraUpdateError, RuntimeAdapters
from router.front.http_errors import ApiError
from router.front.openai_models import InvalidRequest, parse_body
from splitserve.engine.lora_names import check_lora_name

_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str
    lora_path: str


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str
    lora_int_id: int | None = None  # vLLM's clients may send it; names are what splitserve goes by


class LoraEndpoints:
    def __init__(self, endpoints):
        """`endpoints`: http_api.Endpoints (its context and body reading)."""
        self.endpoints = endpoints

    @property
    def runtime(self) -> RuntimeAdapters:
        """The adapters loaded at runtime, kept on every healthy node: the server's (over --lora-store), or this
        router's own in memory, made at the first call (the registry is there then)."""
        ctx = self.endpoints.ctx
        if ctx.runtime_loras is None:
            ctx.runtime_loras = RuntimeAdapters(ctx.orchestrator.registry, LOAD_TIMEOUT_S)
        return ctx.runtime_loras

    async def load(self, request: Request) -> PlainTextResponse:
        body = parse_body(LoadLoraRequest, await self.endpoints.body(request))
        _check_name(body.lora_name)
        if body.lora_name in (self.endpoints.ctx.model_name, *self.endpoints.ctx.model_aliases):
            raise InvalidRequest(f"{body.lora_name!r} names the base model", "lora_name")
        if body.lora_name in self.endpoints.ctx.orchestrator.lora_adapters():
            raise InvalidRequest(f"the LoRA adapter {body.lora_name!r} has already been loaded", "lora_name")
        await _node_errors(self.runtime.load(body.lora_name, body.lora_path), "lora_path")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload(self, request: Request) -> PlainTextResponse:
        body = parse_body(UnloadLoraRequest, await self.endpoints.body(request))
        _check_name(body.lora_name)
        await _node_errors(self.runtime.unload(body.lora_name), "lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def off(self, request: Request) -> None:
        """Either route without --allow-runtime-lora (the body limit still holds)."""
        await self.endpoints.body(request)
        raise ApiError(404, "runtime LoRA updating is off: start the router with --allow-runtime-lora "
                            "(adapters given to the nodes' --lora-modules are served either way)", code="not_found")


def _check_name(name: str) -> None:
    try:
        check_lora_name(name)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "lora_name") from None


async def _node_errors(work, param: str) -> None:
    """Runs the nodes' work; a node's refusal as the client's error, naming `param`."""
    try:
        await work
    except LoraUpdateError as exc:
        status = _STATUS.get(exc.code, 503)
        raise ApiError(status, str(exc), "invalid_request_error" if status < 500 else "service_unavailable",
                       param=param if status < 500 else None) from None


def add_lora_routes(app: FastAPI, endpoints, check_key, allowed: bool) -> None:
    """The two routes; without `allowed`, each answers a 404 that says how to turn them on."""
    lora = LoraEndpoints(endpoints)
    keyed = [Depends(check_key)]
    for path, handler in (("/v1/load_lora_adapter", lora.load), ("/v1/unload_lora_adapter", lora.unload)):
        app.add_api_route(path, handler if allowed else lora.off, methods=["POST"], dependencies=keyed)
