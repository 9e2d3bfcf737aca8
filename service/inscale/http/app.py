"""The HTTP side of the server: the FastAPI app with every route in its request-id and metrics
layers, in front of it the ASGI driver of the inference routes, and the direct path that
inscale's protocol serves most of them with (handed to it in the lifespan state)."""

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from inscale import __version__
from inscale.http import data_routes
from inscale.http.direct_path import DIRECT_KEY, DirectPath
from inscale.http.docs import install_docs
from inscale.http.errors import install_error_handlers
from inscale.http.fast_path import FastPath
from inscale.http.native_routes import native_router
from inscale.http.request_id import RequestIdMiddleware
from inscale.metrics.http import HttpSeries, MetricsMiddleware
from inscale.metrics.prometheus import Metrics
from inscale.protocols.predict import routes as predict
from inscale.protocols.predict.errors import PREDICT_STATUS
from inscale.protocols.v2 import routes as v2_routes
from inscale.server_state import ServerState

# Its state (a mapping) is handed to every request's scope and to uvicorn's protocol.
Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]


def http_app(state: ServerState, metrics: Metrics | None, lifespan: Lifespan) -> ASGIApp:
    inference = (*predict.DATA_ROUTES, *v2_routes.DATA_ROUTES)
    table = data_routes.RouteTable(inference)
    series = None if metrics is None else HttpSeries(metrics)
    direct = DirectPath(table, state, series)

    @asynccontextmanager
    async def with_direct_path(app: Any) -> AsyncIterator[Mapping[str, Any]]:
        async with lifespan(app) as lifespan_state:
            yield {**lifespan_state, DIRECT_KEY: direct}

    app = FastAPI(
        title="inscale",
        version=__version__,
        summary="ONNX model serving with dynamic batching",
        lifespan=with_direct_path,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.server = state
    install_error_handlers(app, PREDICT_STATUS)
    # One table of inference routes: registered in FastAPI (OpenAPI, /docs) and served by
    # the direct path and the ASGI driver.
    data_routes.register(app, inference)
    app.include_router(native_router(metrics, state.plane.registry))
    app.include_router(v2_routes.router)
    rest: ASGIApp = app
    if series is not None:
        # Inside the request id's layer: it must sit inside an `async def` one.
        rest = MetricsMiddleware(rest, series)
    # The inference routes first, with their request id and series in the same one layer.
    return FastPath(RequestIdMiddleware(rest), table, state, series)
