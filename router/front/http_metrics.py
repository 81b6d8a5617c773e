"""Prometheus counts of the HTTP front: each request by route, method and status (`CountRequests`)."""

from __future__ import annotations


class CountRequests:
    """ASGI middleware: counts each HTTP request by the route that took it (its path template, so ids in paths
    do not multiply the series; "other" when no route matched), method and status (500 when the app failed
    before answering). Pure ASGI, so streams and disconnects pass through untouched."""

    def __init__(self, app, count):
        """`count`: (route, method, status) -> None."""
        self.app, self.count = app, count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = scope.get("route")
            self.count(getattr(route, "path", "other"), scope["method"], str(status))
