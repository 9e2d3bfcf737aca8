"""Per-app state shared by the routes, built in the app factory (never at import time)."""

from dataclasses import dataclass, field

from fastapi import Request

from inscale.errors import InvalidInput, ModelNotFound
from inscale.models.registry import ModelRegistry
from inscale.settings import ModelControl, ServerSettings


@dataclass(slots=True)
class AppContext:
    settings: ServerSettings
    registry: ModelRegistry
    startup_done: bool = False  # initial loading finished (successfully or not)
    shutting_down: bool = False
    extras: dict[str, object] = field(default_factory=dict)

    def model_name(self, requested: str | None) -> str:
        """The model a request means: the one it names, the configured default, or the only one."""
        if requested is not None:
            return requested
        default = self.settings.resolved_default_model()
        if default is not None:
            return default
        names = self.registry.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ModelNotFound("no model is loaded")
        raise InvalidInput(f'several models are served ({", ".join(names)}); name one in "model"')

    def ready(self) -> bool:
        if not self.startup_done or self.shutting_down:
            return False
        if self.settings.model_control is ModelControl.EXPLICIT:
            # As in Triton's explicit mode: models come and go through the API and each
            # reports its own readiness; the server is ready once it has started.
            return True
        if self.settings.strict_readiness:
            return self.registry.all_ready()
        return self.registry.any_ready()


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx
