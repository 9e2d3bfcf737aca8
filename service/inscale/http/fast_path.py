"""The data path: inference routes served in one ASGI layer, without FastAPI's routing.

FastAPI's dependency solving and middleware stack cost about 70 microseconds per request
on these machines (a plain Starlette route: 75 us per request, the same route in FastAPI:
145 us), and each further layer costs every ASGI message a hop through its `send`. So this
outermost app matches the inference routes first (from the data-plane route table,
`inscale.http.data_routes`) and does for them, in one pass, what the layers around FastAPI do
for every other route: the request id (the client's `X-Request-ID` if sent, in the logging
context and echoed), the HTTP series (`inscale.metrics.http.HttpSeries`, the same one the
middleware counts into), and the response, written whole in one write where the protocol
offers it (`inscale.http.whole_response`). Everything else (metadata, health, docs) goes on to
`rest`: the FastAPI app in its request-id and metrics layers, where the same endpoints are
registered too.
"""

import asyncio
import re
import time
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from inscale.http.data_routes import DataRoute
from inscale.http.disconnect import client_left
from inscale.http.errors import ClientGone, response_for
from inscale.http.request_id import client_request_id
from inscale.http.scope_keys import WRITE_KEY
from inscale.logs import new_request_id, request_id
from inscale.metrics.http import HttpSeries

_ID_HEADER = b"x-request-id"
_SEEN_MAX = 1024  # paths whose match is remembered (see `_match`)
WriteWhole = Callable[[Scope, int, Sequence[tuple[bytes, bytes]], bytes | memoryview], bool]


class FastPath:
    def __init__(
        self,
        rest: ASGIApp,
        app: ASGIApp,
        routes: Sequence[DataRoute],
        series: HttpSeries | None,
    ) -> None:
        """`rest` serves every other request; `app` (the FastAPI app) is what endpoints see
        as `request.app`, for its state."""
        self.rest = rest
        self.app = app
        self._series = series
        self._exact: dict[tuple[str, str], DataRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], DataRoute]] = []
        self._seen: dict[tuple[str, str], tuple[DataRoute | None, dict[str, str]]] = {}
        for route in routes:
            pattern = route.pattern()
            if pattern is None:
                self._exact[(route.method, route.path)] = route
            else:
                self._patterns.append((pattern, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the whole request: every frame between uvicorn's task and the
        # batcher's future is passed through again at each resumption.
        route = None
        if scope["type"] == "http":
            route, params = self._match(scope["method"], scope["path"])
        if route is None:
            await self.rest(scope, receive, send)
            return
        started = time.perf_counter()
        rid = client_request_id(scope["headers"]) or new_request_id()
        token = request_id.set(rid)
        try:
            scope["path_params"] = params
            scope["app"] = self.app  # so request.app.state is the FastAPI app's state
            request = Request(scope, receive, send)
            try:
                response = await route.endpoint(request)
            except Exception as exc:
                response = response_for(request, exc, route.errors)
            except asyncio.CancelledError:
                if not client_left(scope):
                    raise  # the server is cancelling the request, not its client
                response = response_for(request, ClientGone(), route.errors)
            status = response.status_code
            headers = [*response.raw_headers, (_ID_HEADER, rid.encode("latin-1"))]
            body = response.body
            write: WriteWhole | None = scope.get(WRITE_KEY)
            if write is None or not write(scope, status, headers, body):
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            if self._series is not None:
                self._series.observe(
                    scope["method"], route.path, status, time.perf_counter() - started
                )
        finally:
            request_id.reset(token)

    def _match(self, method: str, path: str) -> tuple[DataRoute | None, dict[str, str]]:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        # A path is matched against the patterns once, not at every request: the paths a
        # server sees are few (a model's infer URL, the probes), and any number of others
        # (a scanner) only refill a bounded table.
        known = self._seen.get((method, path))
        if known is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            known = self._seen[(method, path)] = self._search(method, path)
        route, params = known
        return route, dict(params)  # the request's own: an endpoint may change its copy

    def _search(self, method: str, path: str) -> tuple[DataRoute | None, dict[str, str]]:
        for pattern, candidate in self._patterns:
            if candidate.method == method:
                found = pattern.match(path)
                if found:
                    return candidate, found.groupdict()
        return None, {}
