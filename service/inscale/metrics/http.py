"""The HTTP-level series: a pure ASGI middleware counting and timing every HTTP request.

It wraps every route but the inference ones, which the data path (`inscale.http.fast_path`)
counts itself into the same series (`HttpSeries`), so 4xx and 5xx rates are visible even for
requests that never reach a model. It labels by route *template* (`/models/{name}`), never the
raw path: FastAPI's router leaves the matched route in the scope, and every path no route
matched goes under one label, so a scanner cannot grow the number of series. Per-model series
are not made here: they come from the data plane's events, the same for every protocol.
"""

import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inscale.metrics.prometheus import Metrics
from inscale.metrics.series import CounterLike, HistogramLike

UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Answer:
    """One request as the middleware follows it, from its start to its last body message."""

    __slots__ = ("_finish", "_send", "scope", "started", "status")

    def __init__(self, scope: Scope, send: Send, finish: Callable[["_Answer"], None]) -> None:
        self.scope = scope
        self.started = time.perf_counter()
        self.status = 0
        self._send = send
        self._finish = finish

    async def send(self, message: Message) -> None:
        await self._send(message)
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self._finish(self)


class HttpSeries:
    """The HTTP request counter and duration histogram, by method, route template and status:
    the one place both the middleware and the data path (`inscale.http.fast_path`) count."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # (method, template, status) -> children, made once per label set. Templates and
        # methods are bounded sets, so this is too.
        self._children: dict[tuple[str, str, int], tuple[CounterLike, HistogramLike]] = {}

    def observe(self, method: str, template: str, status: int, elapsed_s: float) -> None:
        key = (method if method in _METHODS else "OTHER", template, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._metrics.http(key[0], key[1], str(key[2]))
        count, duration = children
        count.inc()
        duration.observe(elapsed_s)


class MetricsMiddleware:
    """Counts and times every HTTP request; see the module docstring.

    `__call__` is not a coroutine: it returns the inner app's awaitable, and the request is
    counted when its last body message has been sent. A coroutine layer here would be one more
    frame that every suspension of the request (reading the body, waiting for the batch, ...)
    passes through on the way out and back in; that cost about 2% of a /predict request on
    these machines. So it must be wrapped by an `async def` middleware (uvicorn tells ASGI 3
    apps from ASGI 2 ones by that), and a request that crashes before any response is sent is
    not counted here (FastAPI turns exceptions into responses first).
    """

    def __init__(self, app: ASGIApp, series: HttpSeries) -> None:
        self.app = app
        self._series = series

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        answer = _Answer(scope, send, self._finish)
        return self.app(scope, receive, answer.send)

    def _finish(self, answer: _Answer) -> None:
        scope = answer.scope
        self._series.observe(
            scope["method"], _template(scope), answer.status, time.perf_counter() - answer.started
        )


def _template(scope: Scope) -> str:
    route = scope.get("route")  # set by Starlette's router when FastAPI handled the request
    found = getattr(route, "path_format", None) if route is not None else None
    return found if isinstance(found, str) else UNMATCHED
