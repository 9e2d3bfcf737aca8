"""The model repository's control operations, the same for every protocol: the index of what
is in the repository and what is loaded, load, and unload; and the gate in front of the two
that change the server (`ControlGate`, set by `--control-api`).

A protocol parses its own request and calls these; they raise only the core's errors.
"""

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from inscale.errors import ConfigError, ModelNotFound, PermissionDenied, Unsupported, quoted
from inscale.models.registry import ModelRegistry, ModelState
from inscale.models.repository import check_model_name
from inscale.settings import ServerSettings

log = logging.getLogger(__name__)
_BEARER = "bearer "


class ControlGate:
    """Whether a control call may run: `off` refuses all, `token` needs the bearer token
    (compared in constant time), `open` allows all. Reads never come here."""

    def __init__(self, mode: str, token: str | None) -> None:
        self._mode = mode
        self._token = token.encode() if token else None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "ControlGate":
        token = settings.control_token
        if settings.control_api == "token" and settings.control_token_file is not None:
            try:
                token = settings.control_token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"the control token file {settings.control_token_file} cannot be read: {exc}"
                ) from exc
            if not token:
                raise ConfigError(f"the control token file {settings.control_token_file} is empty")
        if settings.control_api == "open":
            log.warning(
                "the control API is OPEN: anyone who reaches this server can load and unload "
                "models; use --control-api token outside local development"
            )
        return cls(settings.control_api, token)

    def check(self, authorization: str | None) -> None:
        """`authorization`: the request's `Authorization` header (gRPC: its metadata)."""
        if self._mode == "open":
            return
        if self._mode == "off":
            raise PermissionDenied(
                "the control API is off on this server: start it with --control-api token "
                "(and INSCALE_CONTROL_TOKEN or INSCALE_CONTROL_TOKEN_FILE) to load and unload "
                "models"
            )
        given = b""
        if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
            given = authorization[len(_BEARER) :].strip().encode()
        assert self._token is not None  # the settings refuse token mode without one
        if not hmac.compare_digest(given, self._token):
            raise PermissionDenied(
                "this call needs the control token: send 'Authorization: Bearer <token>'"
            )


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
