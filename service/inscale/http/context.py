"""Per-app state shared by the HTTP routes, built in the app factory (never at import time)."""

from dataclasses import dataclass

from starlette.requests import Request

from inscale.dataplane import DataPlane
from inscale.settings import ModelControl, ServerSettings


@dataclass(slots=True)
class AppContext:
    settings: ServerSettings
    plane: DataPlane
    startup_done: bool = False  # initial loading finished (successfully or not)
    shutting_down: bool = False

    def ready(self) -> bool:
        if not self.startup_done or self.shutting_down:
            return False
        registry = self.plane.registry
        if self.settings.model_control is ModelControl.EXPLICIT:
            # As in Triton's explicit mode: models come and go through the API and each
            # reports its own readiness; the server is ready once it has started.
            return True
        if self.settings.strict_readiness:
            return registry.all_ready()
        return registry.any_ready()


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx
