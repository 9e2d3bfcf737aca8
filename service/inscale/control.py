"""The model repository's control operations, the same for every protocol: the index of what
is in the repository and what is loaded, load, and unload.

A protocol parses its own request and calls these; they raise only the core's errors.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from inscale.errors import ModelNotFound, Unsupported, quoted
from inscale.models.registry import ModelRegistry, ModelState
from inscale.models.repository import check_model_name


@dataclass(frozen=True, slots=True)
class IndexRow:
    name: str
    version: str  # "" for a model with no loaded version
    state: str
    reason: str


def repository_index(registry: ModelRegistry, ready_only: bool) -> list[IndexRow]:
    """Every model in the repository or loaded, one row per version (Triton's index)."""
    rows: list[IndexRow] = []
    loaded = set(registry.names())
    for name in sorted(loaded | set(registry.repository.names())):
        entries = registry.entries(name) if name in loaded else []
        if not entries and not ready_only:
            rows.append(IndexRow(name, "", "UNAVAILABLE", "unloaded"))
        for entry in entries:
            if not ready_only or entry.state is ModelState.READY:
                version = str(entry.version) if entry.version > 0 else ""
                rows.append(IndexRow(name, version, entry.state.value, entry.reason))
    return rows


async def load(registry: ModelRegistry, name: str, parameters: Iterable[str]) -> None:
    """(Re)load a model from its repository folder. A new version serves only once warm; the
    old one keeps serving meanwhile, then drains. `parameters`: the names of the request's
    load parameters, which may not replace the model's files or config."""
    check_model_name(name)
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise Unsupported(
            f"load parameter '{overrides[0]}' is not supported: models load from the "
            "repository folder only"
        )
    await registry.load(name)


async def unload(registry: ModelRegistry, name: str) -> None:
    """Unload a model: it refuses new requests at once and finishes those it accepted."""
    check_model_name(name)
    if name in registry.names():
        await registry.unload(name)
    elif name not in registry.repository.names():
        raise ModelNotFound(f"unknown model {quoted(name)}")
    # else: in the repository and not loaded, so already unloaded (Triton answers 200 too)
