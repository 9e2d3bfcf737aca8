"""Models loaded in this process: their versions, states, and the `ModelVersion`s that serve them.

Loading a new version serves the old one until the new one is warm; unloading drains the
requests a version already accepted before its sessions are dropped. A model that fails to
load is recorded as UNAVAILABLE with the reason, and the others carry on.
"""

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inscale.errors import InscaleError, ModelLoadError, ModelNotFound, ModelNotReady, quoted
from inscale.events import ModelEvents
from inscale.models.loading import load_version
from inscale.models.repository import ModelRepository, ModelSource
from inscale.models.version import ModelVersion

log = logging.getLogger(__name__)

# Makes the Prometheus consumer of a model version's events (None: metrics are off).
MetricsFactory = Callable[[str, int], ModelEvents]


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(slots=True)
class VersionEntry:
    version: int
    state: ModelState
    model: ModelVersion | None = None
    reason: str = ""
    load_seconds: float = 0.0
    size_bytes: int = 0  # the version's files on disk


class ModelRegistry:
    def __init__(
        self,
        repository: ModelRepository,
        default_providers: list[str],
        *,
        drain_timeout_s: float,
        metrics_factory: MetricsFactory | None = None,
    ) -> None:
        self.repository = repository
        self._providers = default_providers
        self._drain_timeout_s = drain_timeout_s
        self._metrics_factory = metrics_factory
        self._models: dict[str, dict[int, VersionEntry]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lookups (hot path) ----------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The model version asked for, or the newest ready version when none is given."""
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        if not versions:
            raise ModelNotReady(f"model '{name}' is still loading")
        if version is None:
            newest: VersionEntry | None = None  # the newest ready one, in one pass
            for candidate in versions.values():
                if candidate.state is ModelState.READY and (
                    newest is None or candidate.version > newest.version
                ):
                    newest = candidate
            if newest is None:
                states = ", ".join(
                    f"{e.version}: {e.state.value}" + (f" ({e.reason})" if e.reason else "")
                    for e in versions.values()
                )
                raise ModelNotReady(f"model '{name}' has no ready version ({states})")
            entry = newest
        else:
            found = versions.get(version)
            if found is None:
                raise ModelNotFound(f"model '{name}' has no version {version}")
            entry = found
        if entry.state is not ModelState.READY or entry.model is None:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(
                f"model '{name}' version {entry.version} is {entry.state.value}{detail}"
            )
        return entry.model

    def names(self) -> list[str]:
        return sorted(self._models)

    def entries(self, name: str) -> list[VersionEntry]:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        return [versions[v] for v in sorted(versions)]

    def all_ready(self) -> bool:
        return bool(self._models) and all(
            e.state is ModelState.READY for v in self._models.values() for e in v.values()
        )

    def any_ready(self) -> bool:
        return any(e.state is ModelState.READY for v in self._models.values() for e in v.values())

    # -- load and unload -------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model; a failure is recorded (and logged) and the next one goes on."""
        names = self.repository.names()
        for name in names:
            # Known but not loaded yet: a request for it is "not ready" (503), not "unknown".
            self._models.setdefault(name, {})
        for name in names:
            with contextlib.suppress(InscaleError):
                await self.load(name)

    async def load(self, name: str) -> None:
        """(Re)load a model from the repository; raises if no selected version could load."""
        source = self.repository.describe(name)  # validates the name; 404 if absent
        async with self._locks.setdefault(name, asyncio.Lock()):
            failures = await self._load_versions(source)
        if failures:
            raise ModelLoadError(f"model '{name}' failed to load: {'; '.join(failures)}")

    async def _load_versions(self, source: ModelSource) -> list[str]:
        versions = self._models.setdefault(source.name, {})
        if source.config is None or not source.versions:
            reason = "; ".join(source.problems) or "nothing to load"
            log.error("model %s cannot be loaded: %s", source.name, reason)
            if not versions:
                versions[0] = VersionEntry(0, ModelState.UNAVAILABLE, reason=reason)
            return [reason]
        versions.pop(0, None)  # forget an earlier failure with no version to show
        failures = []
        for version in source.versions:
            failure = await self._load_version(source, version, versions)
            if failure:
                failures.append(failure)
        for stale in [v for v in versions if v not in source.versions]:
            await self._unload_version(source.name, versions, stale)
        return failures

    async def _load_version(
        self, source: ModelSource, version: int, versions: dict[int, VersionEntry]
    ) -> str | None:
        assert source.config is not None
        previous = versions.get(version)
        if previous is None or previous.model is None:
            versions[version] = VersionEntry(version, ModelState.LOADING)
        metrics = self._metrics_factory(source.name, version) if self._metrics_factory else None
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(
                load_version,
                source.name,
                version,
                source.model_path(version),
                source.config,
                self._providers,
                metrics,
            )
        except Exception as exc:
            reason = (
                exc.message if isinstance(exc, InscaleError) else f"{type(exc).__name__}: {exc}"
            )
            log.error("model %s version %d failed to load: %s", source.name, version, reason)
            if previous is None or previous.model is None:
                versions[version] = VersionEntry(version, ModelState.UNAVAILABLE, reason=reason)
            return f"version {version}: {reason}"
        model.start()
        versions[version] = VersionEntry(
            version,
            ModelState.READY,
            model,
            load_seconds=time.monotonic() - started,
            size_bytes=_size_on_disk(source.model_path(version).parent),
        )
        if previous is not None and previous.model is not None:
            await self._retire(previous.model)  # the new version already takes requests
        return None

    async def unload(self, name: str) -> None:
        if name not in self._models:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions = self._models.get(name, {})
            for version in list(versions):
                await self._unload_version(name, versions, version)
            self._models.pop(name, None)

    async def _unload_version(
        self, name: str, versions: dict[int, VersionEntry], version: int
    ) -> None:
        entry = versions[version]
        entry.state = ModelState.UNLOADING
        if entry.model is not None:
            await self._retire(entry.model)
        del versions[version]
        log.info("unloaded model %s version %d", name, version)

    async def _retire(self, model: ModelVersion) -> None:
        if not await model.drain(self._drain_timeout_s):
            log.warning("model %s:%d did not drain in time", model.name, model.version)
        await model.close()

    async def shutdown(self) -> None:
        """Drain every version (they refuse new requests at once), then close them."""
        models = [e.model for v in self._models.values() for e in v.values() if e.model is not None]
        for entry in (e for v in self._models.values() for e in v.values()):
            entry.state = ModelState.UNLOADING
        await asyncio.gather(*(self._retire(m) for m in models))


def _size_on_disk(folder: Path) -> int:
    """Bytes of a version folder: the model file and any external weights beside it."""
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0
