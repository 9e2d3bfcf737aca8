"""The server's configuration: one typed model, read from `INSCALE_*` environment variables.

Command-line flags override the environment (the CLI passes them as init arguments). Worker
processes started by `--workers N` rebuild the same settings from the environment, so every
field must round-trip through an environment variable.
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic.functional_validators import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_REPOSITORY = Path(__file__).resolve().parent / "bundled_models"
BUNDLED_DEFAULT_MODEL = "digits"


class ModelControl(StrEnum):
    """Which models are loaded at start (names follow Triton's `--model-control-mode`)."""

    ALL = "all"
    EXPLICIT = "explicit"


def _split_commas(value: object) -> object:
    # `INSCALE_PROVIDERS=cuda,cpu` is friendlier than a JSON list in an environment variable.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(BaseSettings):
    """Everything the server needs to start, with bounds on every number."""

    model_config = SettingsConfigDict(env_prefix="INSCALE_", extra="ignore", frozen=True)

    model_repository: Path | None = Field(
        default=None,
        description="Folder with one subfolder per model; unset serves the bundled models.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; the container image sets 0.0.0.0.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    workers: int = Field(
        default=1, ge=1, le=64, description="Server processes; each loads every model."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Lowest level of log record written."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json for log pipelines, text for a terminal."
    )
    model_control: ModelControl = Field(
        default=ModelControl.ALL,
        description="`all` loads every model at start; `explicit` loads only through the API.",
    )
    default_model: str | None = Field(
        default=None,
        description="Model used when a /predict request names none (implied when only one).",
    )
    providers: Annotated[list[str], NoDecode, BeforeValidator(_split_commas)] = Field(
        default_factory=lambda: ["cpu"],
        description="Execution providers, in order of preference, for models whose config "
        "names none (cpu, cuda, tensorrt or full ORT names). CPU is always the last fallback.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=2**34,
        description="Largest request body accepted; larger ones get 413 before being read.",
    )
    strict_readiness: bool = Field(
        default=False,
        description="Ready only when every model is ready (default: when at least one is).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long in-flight and queued requests may take to finish.",
    )
    access_log: bool = Field(default=False, description="Log a line for every request.")
    retry_after_s: int = Field(
        default=1, ge=0, le=3600, description="Retry-After sent with 503 on a full queue."
    )
    metrics: bool = Field(
        default=True,
        description="Record Prometheus metrics and serve them at GET /metrics.",
    )
    metrics_multiprocess_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="Where worker processes write metric values (prometheus-client's "
        "multiprocess mode). `inscale serve --workers N` sets it to a fresh folder per start.",
    )

    def repository_path(self) -> Path:
        return self.model_repository if self.model_repository is not None else BUNDLED_REPOSITORY

    def resolved_default_model(self) -> str | None:
        if self.default_model is not None:
            return self.default_model
        return BUNDLED_DEFAULT_MODEL if self.model_repository is None else None
