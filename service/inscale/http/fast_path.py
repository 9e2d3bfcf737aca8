"""The ASGI driver of the data routes: the outermost ASGI app, without FastAPI's routing.

FastAPI's dependency solving and middleware stack cost about 70 microseconds per request
on these machines (a plain Starlette route: 75 us per request, the same route in FastAPI:
145 us), and each further layer costs every ASGI message a hop through its `send`. So this
app matches the inference routes first (`inscale.http.data_routes.RouteTable`) and does for
them, in one pass, what the layers around FastAPI do for every other route: the request id
(the client's `X-Request-ID` if sent, in the logging context and echoed), the HTTP series
(`inscale.metrics.http.HttpSeries`, the same one the middleware counts into), and the
response, written whole in one write where the protocol offers it
(`inscale.http.whole_response`). Everything else (metadata, health, docs) goes on to `rest`:
the FastAPI app in its request-id and metrics layers.

Under `inscale serve` most inference requests never get here: the protocol serves them itself
(`inscale.http.direct_path`). This driver takes the rest (a pipelined request, a compressed or
chunked body, an access-logged server) and every request under another ASGI server.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from inscale.http.body import receive_body
from inscale.http.data_routes import DataCall, Reply, RouteTable, serve, wire_headers
from inscale.http.errors import response_for
from inscale.http.request_id import client_request_id
from inscale.http.scope_keys import GONE_KEY, WRITE_KEY
from inscale.logs import new_request_id, request_id
from inscale.metrics.http import HttpSeries
from inscale.server_state import ServerState

WriteWhole = Callable[[Scope, int, Sequence[tuple[bytes, bytes]], bytes | memoryview], bool]


class FastPath:
    def __init__(
        self,
        rest: ASGIApp,
        table: RouteTable,
        state: ServerState,
        series: HttpSeries | None,
    ) -> None:
        """`rest` serves every request that is not a data route's."""
        self.rest = rest
        self._table = table
        self._state = state
        self._series = series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the whole request: every frame between uvicorn's task and the
        # batcher's future is passed through again at each resumption.
        route = None
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            route, params = self._table.match(method, path)
        if route is None:
            await self.rest(scope, receive, send)
            return
        started = time.perf_counter()
        headers = scope["headers"]
        rid = client_request_id(headers) or new_request_id()
        token = request_id.set(rid)
        watcher = None
        try:
            gone: asyncio.Future[Any] | None = scope.get(GONE_KEY)
            try:
                body = await receive_body(headers, receive, self._state.settings.max_body_bytes)
            except Exception as exc:  # too large, badly encoded, the client gone mid-body
                reply = Reply.of(response_for(method, path, exc, route.errors))
            else:
                if gone is None:  # another server: after the body, the next message is the
                    gone = watcher = asyncio.ensure_future(receive())  # disconnect
                call = DataCall(self._state, headers, params, body, started, gone)
                reply = await serve(route, call, method, path)
            status = reply.status
            out = wire_headers(reply, rid)
            write: WriteWhole | None = scope.get(WRITE_KEY)
            if write is None or not write(scope, status, out, reply.body):
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": reply.body})
            if self._series is not None:
                self._series.observe(method, route.path, status, time.perf_counter() - started)
        finally:
            if watcher is not None:
                watcher.cancel()
            request_id.reset(token)
