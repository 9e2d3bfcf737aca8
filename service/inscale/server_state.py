"""What every protocol of one server process shares: settings, the data plane, and whether
the server is ready. Built by the app factory (`inscale.app`), never at import time."""

from dataclasses import dataclass

from inscale.control import ControlGate
from inscale.dataplane import DataPlane
from inscale.settings import ModelControl, ServerSettings


@dataclass(slots=True)
class ServerState:
    settings: ServerSettings
    plane: DataPlane
    control: ControlGate
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
