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
from collections.abc import Sequence

from fastapi import APIRouter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.fast_path import Endpoint
from service.metrics import Exchange, Metrics
from service.registry import ModelRegistry
from service.tallies import Spread, Tally

UNMATCHED = "<unmatched>"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CACHE_LIMIT = 4096  # fast-path paths remembered (one per model and version for V2 routes)
_Children = tuple[Tally, Spread]


class MetricsMiddleware:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server sends if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        exchange = Exchange()
        token = self._metrics.exchange.set(exchange)
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self._metrics.exchange.reset(token)
            elapsed = time.perf_counter() - started
            method = scope["method"]
            template, inference = self._route(scope, method)
            children = self._children.get((method, template, status))
            if children is None:
                children = self._label(method, template, status)
            children[0].inc()
            children[1].observe(elapsed)
            if inference and exchange.model is not None:
                exchange.model.request_answered(status, elapsed)

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
