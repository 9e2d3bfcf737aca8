"""The data plane's fast path: inference routes dispatched without FastAPI's routing.

FastAPI's dependency solving and middleware stack cost about 70 microseconds per request
on these machines (a plain Starlette route: 75 us per request, the same route in FastAPI:
145 us). For the inference routes that would be most of the HTTP budget, so this ASGI app
matches them first (from the data-plane route table, `inscale.http.data_routes`) and calls the
endpoint with a Starlette `Request`; everything else (metadata, health, docs) goes on to the
FastAPI app, where the same endpoints are registered too. It records the matched route's
template in the scope (`ROUTE_KEY`) for the metrics middleware.
"""

import re
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from inscale.http.data_routes import DataRoute
from inscale.http.errors import response_for
from inscale.metrics.http import ROUTE_KEY  # where the middleware reads the route template


class FastPath:
    def __init__(self, app: ASGIApp, routes: Sequence[DataRoute]) -> None:
        self.app = app
        self._exact: dict[tuple[str, str], DataRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], DataRoute]] = []
        for route in routes:
            pattern = route.pattern()
            if pattern is None:
                self._exact[(route.method, route.path)] = route
            else:
                self._patterns.append((pattern, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route, params = self._match(scope["method"], scope["path"])
            if route is not None:
                scope["path_params"] = params
                scope["app"] = self.app  # so request.app.state is the FastAPI app's state
                scope[ROUTE_KEY] = route.path
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request)
                except Exception as exc:
                    response = response_for(request, exc, route.errors)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _match(self, method: str, path: str) -> tuple[DataRoute | None, dict[str, str]]:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        for pattern, candidate in self._patterns:
            if candidate.method == method:
                found = pattern.match(path)
                if found:
                    return candidate, found.groupdict()
        return None, {}
