"""The app factory. Everything long-lived is created here or in the lifespan, not at import.

Models load in the background after the server starts listening, so liveness answers at
once and readiness turns true when loading is done (the Kubernetes startup probe waits).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp

from service import __version__
from service.http import models, predict
from service.http.context import AppContext
from service.http.errors import install_error_handlers
from service.http.fast_path import FastPath
from service.http.request_id import RequestIdMiddleware
from service.logs import configure_logging
from service.registry import ModelRegistry
from service.repository import ModelRepository
from service.settings import ModelControl, ServerSettings

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings) -> ASGIApp:
    registry = ModelRegistry(
        ModelRepository(settings.repository_path()),
        list(settings.providers),
        drain_timeout_s=settings.shutdown_grace_s,
    )
    ctx = AppContext(settings=settings, registry=registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_initial_load(ctx))
        try:
            yield
        finally:
            ctx.shutting_down = True
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.shutdown()
            log.info("shut down: every model drained")

    app = FastAPI(
        title="inscale",
        version=__version__,
        summary="ONNX model serving with dynamic batching",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(models.router)
    data_plane = FastPath(app, [("POST", "/predict", predict.predict)])
    return RequestIdMiddleware(data_plane)


async def _initial_load(ctx: AppContext) -> None:
    try:
        if ctx.settings.model_control is ModelControl.ALL:
            log.info("loading models from %s", ctx.registry.repository.root)
            await ctx.registry.load_all()
    finally:
        ctx.startup_done = True
    if not ctx.registry.any_ready() and ctx.settings.model_control is ModelControl.ALL:
        log.error("no model could be loaded from %s", ctx.registry.repository.root)


def create_app_from_env() -> ASGIApp:
    """Entry point for uvicorn worker processes: settings come from INSCALE_* variables."""
    settings = ServerSettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
