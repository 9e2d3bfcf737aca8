"""Inference requests served inside inscale's HTTP protocol, with no ASGI cycle.

Under uvicorn, every request costs a scope, a `RequestResponseCycle` and its `asyncio.Event`,
the `run_asgi` wrapper and the ASGI `receive`/`send` calls before the app sees a byte: on
these machines about 14 us of CPU per request, a raw ASGI app answering at 35,000 requests/s
on one core where the same answer from a protocol callback reaches 110,000 (issue 12's note).
On the Identity model that machinery was a fifth of the request. So `GuardedHttpToolsProtocol`
serves the common inference request itself: once httptools has parsed the headers it asks
`DirectPath.take`, and a request taken is an `Exchange` standing where uvicorn's cycle would.
Its body is collected as httptools parses it; once complete, a `LeanTask` (a Task's stepping
without its costs: `inscale.http.lean_task`) runs the route's endpoint, the same as the ASGI
driver's, and its done-callback writes the reply whole
(`inscale.http.whole_response.response_bytes`) and completes the request as uvicorn would
(keep-alive, `Connection: close`, the next pipelined request, counts).

Only a plain request is taken: a data route, no pipelined request waiting or in progress,
a Content-Length within the limit and no Content-Encoding (`inscale.http.body.plain_length`),
no `Expect: 100-continue`, no upgrade, no root path, no percent-escapes in the path, the client
reading its answers, no access log. Every other request goes to uvicorn's cycle and the ASGI
driver (`inscale.http.fast_path`), which says what is wrong with it where something is:
the two drivers answer alike because everything after the read is the same code.
"""

import contextvars
import time
from typing import TYPE_CHECKING, Any, cast

import httptools

from inscale.http.body import plain_length
from inscale.http.data_routes import (
    DataCall,
    DataRoute,
    Reply,
    RouteTable,
    client_gone,
    error_reply,
    wire_headers,
)
from inscale.http.errors import ClientGone
from inscale.http.lean_task import LeanTask
from inscale.http.request_id import client_request_id
from inscale.http.whole_response import response_bytes
from inscale.logs import new_request_id, request_id
from inscale.metrics.http import HttpSeries
from inscale.server_state import ServerState

if TYPE_CHECKING:
    from inscale.http.guarded_protocol import GuardedHttpToolsProtocol

# Where the app's lifespan state gives the protocol its `DirectPath`.
DIRECT_KEY = "inscale.direct_path"


class _NoWaiters:
    """The `message_event` uvicorn's protocol sets on a disconnect or a timeout: an
    exchange's body is never awaited, so nothing waits on it."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_WAITERS = _NoWaiters()


class DirectPath:
    """The data routes, the server state and the HTTP series: one for every connection."""

    def __init__(self, table: RouteTable, state: ServerState, series: HttpSeries | None) -> None:
        self.table = table
        self.state = state
        self.series = series
        self.limit = state.settings.max_body_bytes

    def take(self, protocol: "GuardedHttpToolsProtocol") -> "Exchange | None":
        """The request whose headers `protocol` has just parsed, as an exchange; None to
        leave it to uvicorn's cycle."""
        previous = protocol.cycle
        if (
            (previous is not None and not previous.response_complete)
            or protocol.pipeline
            or protocol.expect_100_continue
            or protocol.access_log
            or protocol.root_path
            or protocol.flow.write_paused
            or protocol.parser.should_upgrade()
        ):
            return None
        raw_path = httptools.parse_url(protocol.url).path
        if b"%" in raw_path:
            return None
        method = protocol.parser.get_method().decode("ascii")
        path = raw_path.decode("ascii")
        route, params = self.table.match(method, path)
        if route is None or plain_length(protocol.headers, self.limit) is None:
            return None
        keep_alive = protocol.parser.should_keep_alive()
        return Exchange(protocol, self, route, params, method, path, keep_alive)


class Exchange:
    """One request on the direct path, from its parsed headers to its written reply. It has
    the attributes uvicorn's protocol and `GuardedHttpToolsProtocol` read from their cycle."""

    __slots__ = (
        "_call",
        "_chunks",
        "_direct",
        "_method",
        "_params",
        "_path",
        "_protocol",
        "_rid",
        "_route",
        "disconnected",
        "keep_alive",
        "message_event",
        "response_complete",
        "response_started",
        "scope",
        "started",
    )

    def __init__(
        self,
        protocol: "GuardedHttpToolsProtocol",
        direct: DirectPath,
        route: DataRoute,
        params: dict[str, str],
        method: str,
        path: str,
        keep_alive: bool,
    ) -> None:
        self.started = time.perf_counter()
        self._protocol = protocol
        self._direct = direct
        self._route = route
        self._params = params
        self._method = method
        self._path = path
        self._chunks: list[bytes] = []
        self._rid = ""
        self._call: DataCall | None = None
        self.keep_alive = keep_alive  # uvicorn's protocol clears it when the server drains
        self.disconnected = False  # set by uvicorn's protocol when the connection is lost
        self.response_started = False
        self.response_complete = False
        self.message_event = _NO_WAITERS
        self.scope = None  # no ASGI scope: `_write_whole` never matches an exchange

    def on_body(self, chunk: bytes) -> None:
        # Within the declared length, itself within the limit: httptools frames the body.
        self._chunks.append(chunk)

    def start(self) -> None:
        """The body is complete: run the route's endpoint."""
        protocol = self._protocol
        direct = self._direct
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        headers = protocol.headers
        rid = self._rid = client_request_id(headers) or new_request_id()
        call = self._call = DataCall(
            direct.state, headers, self._params, body, self.started, protocol.gone()
        )
        context = contextvars.copy_context()
        context.run(request_id.set, rid)  # every step runs in it: log lines carry the id
        # The endpoint itself is what runs (`data_routes.serve`'s frame would be one more for
        # each resumption); its errors are answered in `_finish`, as `serve` would.
        task = LeanTask(self._route.endpoint(call), protocol.loop, context, self._finish)
        # The server waits for these when it shuts down, and cancels them past its grace
        # period; their count is the in-flight cap's (uvicorn types them as asyncio tasks).
        cast("set[Any]", protocol.tasks).add(task)
        task.start()

    def _finish(self, task: LeanTask[Reply]) -> None:
        protocol = self._protocol
        cast("set[Any]", protocol.tasks).discard(task)
        if task.cancelled():
            if self._call is None or not client_gone(self._call):
                # The server cancelled it: shutting down past its grace period.
                if not protocol.transport.is_closing():
                    protocol.transport.close()
                return
            reply = self._error(ClientGone())
        else:
            failure = task.exception()
            reply = task.result() if failure is None else self._error(failure)
        self._call = None
        if not (self.disconnected or protocol.transport.is_closing()):
            self._write(protocol, reply)
        series = self._direct.series
        if series is not None:
            series.observe(
                self._method, self._route.path, reply.status, time.perf_counter() - self.started
            )

    def _error(self, exc: BaseException) -> Reply:
        if not isinstance(exc, Exception):
            raise exc  # not an error of the request's (KeyboardInterrupt, SystemExit)
        token = request_id.set(self._rid)  # a server failure is logged with the request's id
        try:
            return error_reply(self._route, self._method, self._path, exc)
        finally:
            request_id.reset(token)

    def _write(self, protocol: "GuardedHttpToolsProtocol", reply: Reply) -> None:
        body = reply.body
        headers = wire_headers(reply, self._rid)
        self.response_started = True
        transport = protocol.transport
        default_headers = protocol.server_state.default_headers
        close = not self.keep_alive
        transport.write(response_bytes(reply.status, default_headers, headers, body, close))
        self.response_complete = True
        if close:
            transport.close()
        protocol.on_response_complete()
