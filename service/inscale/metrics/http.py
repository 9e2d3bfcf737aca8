"""The HTTP side of metrics: a middleware that measures every request, and `GET /metrics`.

The middleware is pure ASGI and wraps everything, the inference fast path included, so 4xx
and 5xx rates are visible even for requests that never reach a model. It labels by route
*template* (`/models/{name}`), never the raw path, and puts every path no route matches under
one label, so a scanner cannot grow the number of series.

For inference routes it also attributes the answer to the model version the request resolved
to: the registry reports each resolution (`Metrics.model_resolved`) into this request's
`Exchange`, so the end-to-end latency of answered requests and 400s for bad input are counted
per model, including errors found while decoding (wrong dtype) before the batcher sees them.
"""

import re
import time
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inscale.http.fast_path import Endpoint
from inscale.metrics.prometheus import Exchange, Metrics
from inscale.metrics.tallies import Spread, Tally
from inscale.models.registry import ModelRegistry

UNMATCHED = "<unmatched>"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CACHE_LIMIT = 4096  # fast-path paths remembered (one per model and version for V2 routes)
_Children = tuple[Tally, Spread]


class _Answer(Exchange):
    """One request as the middleware follows it, from its start to its last body message."""

    __slots__ = ("_finish", "_send", "scope", "started", "status")

    def __init__(self, scope: Scope, send: Send, finish: Callable[["_Answer"], None]) -> None:
        super().__init__()
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


class MetricsMiddleware:
    """Counts and times every HTTP request; see the module docstring.

    `__call__` is not a coroutine: it returns the inner app's awaitable, and the request is
    counted when its last body message has been sent. A coroutine layer here would be one more
    frame that every suspension of the request (reading the body, waiting for the batch, ...)
    passes through on the way out and back in; that cost about 2% of a /predict request on
    these machines. So it must be wrapped by an `async def` middleware (uvicorn tells ASGI 3
    apps from ASGI 2 ones by that), and a request that crashes before any response is sent is
    not counted here (FastAPI and the fast path turn exceptions into responses first).
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, fast_routes: Sequence[tuple[str, str, Endpoint]]
    ) -> None:
        """`fast_routes`: the inference routes `FastPath` serves, as given to it."""
        self.app = app
        self._metrics = metrics
        self._inference = {endpoint for _, _, endpoint in fast_routes}
        self._fast = [(method, re.compile(path + "$")) for method, path, _ in fast_routes]
        self._fast_templates: dict[tuple[str, str], str] = {}
        self._children: dict[tuple[str, str, int], _Children] = {}
        # (method, path, status) -> children and "is inference", for paths a route matched:
        # the common case costs one lookup. Bounded, so scanned paths cannot grow it.
        self._seen: dict[tuple[str, str, int], tuple[Tally, Spread, bool]] = {}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        answer = _Answer(scope, send, self._finish)
        # Each request runs in its own task, so its context holds only this request's answer.
        self._metrics.exchange.set(answer)
        return self.app(scope, receive, answer.send)

    def _finish(self, answer: _Answer) -> None:
        elapsed = time.perf_counter() - answer.started
        scope = answer.scope
        key = (scope["method"], scope["path"], answer.status)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._first_time(scope, key)
        count, duration, inference = seen
        count.inc()
        duration.observe(elapsed)
        model = answer.model
        if inference and model is not None:
            model.request_answered(answer.status, elapsed)

    def _first_time(self, scope: Scope, key: tuple[str, str, int]) -> tuple[Tally, Spread, bool]:
        method, _, status = key
        template, inference = self._route(scope, method)
        children = self._children.get((method, template, status))
        if children is None:
            children = self._label(method, template, status)
        found = (*children, inference)
        if template != UNMATCHED and len(self._seen) < _CACHE_LIMIT:
            self._seen[key] = found
        return found

    def _route(self, scope: Scope, method: str) -> tuple[str, bool]:
        """The route template, and whether it is an inference route."""
        route = scope.get("route")  # set by the router when FastAPI handled the request
        if route is not None:
            template = getattr(route, "path_format", None)
            if isinstance(template, str):
                return template, getattr(route, "endpoint", None) in self._inference
        path: str = scope["path"]
        template = self._fast_templates.get((method, path))
        if template is None:
            template = self._fast_template(method, path)
            if template is None:
                return UNMATCHED, False
        return template, True

    def _fast_template(self, method: str, path: str) -> str | None:
        """The template of a path the fast path served: its named groups become `{name}`."""
        for want, regex in self._fast:
            found = regex.match(path) if want == method else None
            if found is None:
                continue
            template = path
            spans = [(found.span(g), g) for g, v in found.groupdict().items() if v is not None]
            for (begin, end), group in sorted(spans, reverse=True):
                template = template[:begin] + "{" + group + "}" + template[end:]
            if len(self._fast_templates) < _CACHE_LIMIT:
                self._fast_templates[(method, path)] = template
            return template
        return None

    def _label(self, method: str, template: str, status: int) -> _Children:
        """Children for a label set, made once; unknown methods all map to one set."""
        known = method if method in _METHODS else "OTHER"
        children = self._children.get((known, template, status))
        if children is None:
            children = self._metrics.http(known, template, str(status))
            self._children[(known, template, status)] = children
        return children


def metrics_router(metrics: Metrics, models: ModelRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics (text exposition format)")
    async def scrape() -> Response:
        return Response(metrics.render(models), media_type=TEXT_FORMAT)

    return router
