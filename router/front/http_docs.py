"""The API's own description behind the API's key rule: GET /openapi.json, /docs (Swagger UI)
and /redoc answer 401 without a valid key when API keys are on, and are open when auth is off.

FastAPI's built-in routes for these take no dependencies, so the app is built with them off
(`openapi_url=None`) and they are served here instead. The two HTML pages load their scripts
from a CDN in the browser and fetch /openapi.json without a key: with keys on, read the schema
with `curl -H "Authorization: Bearer $KEY" .../openapi.json`.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

SCHEMA_PATH = "/openapi.json"


def add_docs_routes(app: FastAPI, check_key: Callable) -> None:
    """Adds /openapi.json, /docs and /redoc to `app`, each guarded by the `check_key` dependency."""
    docs = APIRouter(dependencies=[Depends(check_key)], include_in_schema=False)

    @docs.get(SCHEMA_PATH)
    async def schema() -> dict:
        return app.openapi()

    @docs.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=SCHEMA_PATH, title=f"{app.title} - API")

    @docs.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=SCHEMA_PATH, title=f"{app.title} - API")

    app.include_router(docs)
