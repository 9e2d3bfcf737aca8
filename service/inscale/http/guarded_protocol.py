"""uvicorn's httptools protocol with read timeouts, connection and in-flight caps, and
shutdown accounting (limits and counts: `inscale.http.connection_guard`); and, for the data
path, two things in each request's scope (`inscale.http.scope_keys`): a writer of the whole
response in one write, and the connection's own "gone" future.

`inscale serve` names this class as uvicorn's `http=` (a "module:Class" string, so worker
processes import it too). httptools calls the `on_*` methods as it parses: the first byte of
a request (`on_message_begin`), the end of its headers (`on_headers_complete`, where uvicorn
starts the ASGI app) and the end of its body (`on_message_complete`). They only record the
phase; `data_received` arms a timer once the bytes it was given are parsed, so a request
that arrives in one read (the usual case) arms none.

Idle connections between requests are closed after the keep-alive time, as by uvicorn, but
not with uvicorn's timer: that one was armed at every response and cancelled at the next
request's first read, a libuv timer started and stopped per request (about 3% of an Identity
request's samples in a profile). Here a response records when the connection went idle, and
one timer per connection, armed when none is, fires at the earliest moment the connection
can be due and re-arms itself for the time left if a later response moved the moment on.

What uvicorn's graceful shutdown loses, and how this class keeps it:
- uvicorn closes a connection at once when its last response is complete. A client that
  had already sent its next request then gets a reset; a request whose first bytes were
  parsed is dropped. Here only a connection with no request begun is idle, and an idle one
  is left its keep-alive time (its client may be sending right now): a request arriving
  meanwhile is answered, with `Connection: close`.
- A pipelined request waiting behind the one in progress is dropped when that response
  closes the connection; here the last request known gets the `Connection: close`.
"""

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from inscale.http.connection_guard import STATE_KEY, ConnectionGuard, raw_response
from inscale.http.direct_path import DIRECT_KEY, DirectPath, Exchange
from inscale.http.scope_keys import GONE_KEY, WRITE_KEY
from inscale.http.whole_response import write_whole

# What the request being parsed is waiting for; a timer is armed for HEADERS and BODY.
_IDLE, _HEADERS, _BODY = 0, 1, 2
_FIRST = 3  # only as the phase a timer was armed for: the first request of a new connection


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guard = app_state.get(STATE_KEY)
        if not isinstance(guard, ConnectionGuard):
            raise RuntimeError(
                f"{type(self).__name__} needs the inscale app's lifespan state "
                f"({STATE_KEY!r}): serve with `inscale serve`"
            )
        self._guard = guard
        self._counts = guard.counts
        direct = app_state.get(DIRECT_KEY)
        self._direct = direct if isinstance(direct, DirectPath) else None
        # uvicorn decides from `hasHandlers()`, true whenever the root logger has one (ours):
        # every response then built an access line for a disabled logger, and could not be
        # written whole. The line is written when `--access-log` asked for it.
        self.access_log = self.access_log and config.access_log
        self._phase = _IDLE
        self._timed = _IDLE  # the phase `_timer` was armed for; _IDLE: no timer
        self._timer: asyncio.TimerHandle | None = None
        # The keep-alive wait (see the module docstring): when the last response completed
        # (None: none has), and the timer that checks it.
        self._idle_since: float | None = None
        self._keep_alive: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._draining = False
        self._answered_while_draining = False
        # One per connection, shared by its requests: watching for a disconnect costs a
        # request one callback on it, not a task of its own.
        self._gone: asyncio.Future[None] | None = None
        # Bound once: a per-request closure over the cycle would tie the request's scope and
        # cycle into a reference cycle, garbage for the cyclic collector at every request.
        self._writer = self._write_whole

    # -- connections --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._draining = self._counts.draining  # accepted while the listener was closing
        limits = self._guard.limits
        open_now = len(self.connections)  # this one included
        if open_now > limits.max_connections:
            self._counts.refused_connections += 1
            if open_now > limits.hard_connection_ceiling:
                transport.close()
                return
            self._over_cap = True  # its first request is answered 503, then it is closed
        self._timer = self.loop.call_later(limits.header_timeout_s, self._on_header_timeout)
        self._timed = _FIRST

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._draining and not self._answered_while_draining and not self._busy():
            self._counts.closed_idle += 1
        super().connection_lost(exc)

    def _busy(self) -> bool:
        cycle = self.cycle
        return self._phase != _IDLE or (cycle is not None and not cycle.response_complete)

    # -- parsing: record the phase; time it once the read is parsed ---------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._phase != self._timed:
            self._retime()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS

    def on_headers_complete(self) -> None:
        self._counts.read += 1
        self._phase = _BODY
        refusal = None
        if self._over_cap:
            refusal = self._guard.too_many_connections
        elif len(self.tasks) >= self._guard.limits.max_requests_in_flight:
            refusal = self._guard.too_many_in_flight
            self._counts.refused_requests += 1
        if refusal is None:
            exchange = None if self._direct is None else self._direct.take(self)
            if exchange is not None:
                self.cycle = exchange  # type: ignore[assignment]  # it stands for one
            else:
                self._start_cycle()
        else:
            # uvicorn starts `self.app` for the request: the refusal instead, this once.
            app, self.app = self.app, cast(ASGI3Application, refusal)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        if self._draining:
            self.cycle.keep_alive = False  # every request read while draining is the last

    def _start_cycle(self) -> None:
        """uvicorn's cycle and ASGI task for the request, with the data path's two keys."""
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not a WebSocket upgrade
            # Read by the app's task, which runs after this callback: the scope is its.
            scope = cast(dict[str, Any], self.scope)
            scope[WRITE_KEY] = self._writer
            scope[GONE_KEY] = self.gone()

    def gone(self) -> "asyncio.Future[None]":
        """The connection's future, done once it is lost."""
        if self._gone is None:
            self._gone = self.loop.create_future()
        return self._gone

    def handle_websocket_upgrade(self) -> None:
        # The connection passes to uvicorn's WebSocket protocol: no timer of ours may close
        # it later, and it is no HTTP request waiting for an answer here.
        self._cancel_timer()
        self._phase = _IDLE
        self._counts.read -= 1
        super().handle_websocket_upgrade()

    def on_body(self, body: bytes) -> None:
        cycle: object = self.cycle  # uvicorn's cycle, or an exchange standing for one
        if isinstance(cycle, Exchange):
            cycle.on_body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        cycle: object = self.cycle
        if isinstance(cycle, Exchange):
            cycle.start()
        else:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        self._counts.answered += 1
        if self._draining:
            self._counts.drained += 1
            self._answered_while_draining = True
        # uvicorn's (0.54), with the keep-alive wait of this class for its timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle()

    def _write_whole(
        self,
        scope: object,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | memoryview,
    ) -> bool:
        """`write_whole` for the request whose `scope` this is, if it is the one in progress;
        False (use ASGI `send`) for a pipelined request answered while a later one is parsed."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope:
            return False
        return write_whole(cycle, status, headers, body)

    # -- timers ---------------------------------------------------------------------------

    def _retime(self) -> None:
        phase = self._phase
        if phase == _HEADERS and self._timed == _FIRST:
            return  # the first request's headers are due within the timeout from connecting
        self._cancel_timer()
        limits = self._guard.limits
        if phase == _HEADERS:
            self._timer = self.loop.call_later(limits.header_timeout_s, self._on_header_timeout)
        elif phase == _BODY:
            self._timer = self.loop.call_later(limits.body_timeout_s, self._on_body_timeout)
        self._timed = phase

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timed = _IDLE

    def _on_header_timeout(self) -> None:
        self._timer = None
        self._timed = _IDLE
        if self.transport.is_closing():
            return
        self._counts.header_timeouts += 1
        # A 408 only for a request begun, and only where no other response is being written.
        previous = self.cycle
        if (
            self._phase == _HEADERS
            and not self.pipeline
            and (previous is None or previous.response_complete)
        ):
            default_headers = self.server_state.default_headers
            self.transport.write(raw_response(self._guard.header_timeout_body, default_headers))
        self.transport.close()

    def _on_body_timeout(self) -> None:
        self._timer = None
        self._timed = _IDLE
        if self.transport.is_closing():
            return
        limits = self._guard.limits
        if self.flow.read_paused:
            # The server stopped reading (a pipelined request waits, or the app has not
            # taken the body so far): the delay is ours, not the client's.
            self._timer = self.loop.call_later(limits.body_timeout_s, self._on_body_timeout)
            self._timed = _BODY
            return
        self._counts.body_timeouts += 1
        cycle = self.cycle
        if not cycle.response_started:
            default_headers = self.server_state.default_headers
            self.transport.write(raw_response(self._guard.body_timeout_body, default_headers))
            self._counts.answered += 1
            if self._draining:
                self._counts.drained += 1
                self._answered_while_draining = True
        # The app reading the body sees a disconnect; what it answers is not written.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _idle(self) -> None:
        """The connection is idle from now: closed after the keep-alive time unless a
        request comes."""
        self._idle_since = now = self.loop.time()
        if self._keep_alive is None:
            self._keep_alive = self.loop.call_at(now + self.timeout_keep_alive, self._on_keep_alive)

    def _on_keep_alive(self) -> None:
        self._keep_alive = None
        if self.transport.is_closing() or self._busy() or self.pipeline:
            return  # a request is in: its response arms the wait again
        assert self._idle_since is not None  # armed only once a response completed
        due = self._idle_since + self.timeout_keep_alive
        if self.loop.time() < due:  # answered again since this was armed
            self._keep_alive = self.loop.call_at(due, self._on_keep_alive)
        else:
            self.timeout_keep_alive_handler()

    # -- graceful shutdown --------------------------------------------------------------

    def shutdown(self) -> None:
        """Called by uvicorn for every open connection when a graceful shutdown starts."""
        self._draining = True
        self._counts.draining = True
        if self._busy():
            if self.pipeline:
                self.pipeline[0][0].keep_alive = False  # the last one queued closes
            elif self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False
            # A request still arriving gets it from `on_headers_complete`.
            return
        if self._idle_since is None:
            # Never used yet: its first request may be on the way; give it the idle time
            # any keep-alive connection has (the keep-alive wait closes it, as after a
            # response).
            self._cancel_timer()
            self._idle()
