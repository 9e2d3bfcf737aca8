"""The server's configuration: one typed model, the only place a setting is written.

Each field is, at once, an `INSCALE_*` environment variable, an `inscale serve` flag (cli.py
hands the model to pydantic-settings' CLI parser) and a row of the README's settings table
(`scripts/settings_table.py`). Help text, types, defaults and bounds all come from the field, so
a new setting needs only a field here, with its description and bounds.

Worker processes started by `--workers N` rebuild these settings from the environment, so every
field must round-trip through `environment()`.
"""

import types
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic.functional_validators import BeforeValidator
from pydantic_settings import CLI_SUPPRESS, BaseSettings, CliSuppress, NoDecode, SettingsConfigDict

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

    model_config = SettingsConfigDict(
        env_prefix="INSCALE_",
        extra="ignore",
        frozen=True,
        # How `inscale serve` spells the fields: `--log-level`, and `--access-log` /
        # `--no-access-log` for booleans. `flag_name()` below follows the same rule.
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    model_repository: Path | None = Field(
        default=None,
        description="Folder with one subfolder per model; unset serves the bundled models.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; the container image sets 0.0.0.0.",
    )
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port; 0 picks a free one and logs it."
    )
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC (Triton's default, 8001), "
        "on the same address as HTTP; 0 turns gRPC off.",
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="Server processes; each one loads every model."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Lowest level of log record written."
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json` (one object per line, with `request_id`) for log pipelines, "
        "`text` for a terminal.",
    )
    model_control: ModelControl = Field(
        default=ModelControl.ALL,
        description="`all` loads every model at start; `explicit` starts with none and serves "
        "what `POST /v2/repository/models/{name}/load` loads.",
    )
    default_model: str | None = Field(
        default=None,
        description="Model for /predict requests that name none; unset: `digits` for the "
        "bundled models, else the only model when there is one.",
    )
    providers: Annotated[list[str], NoDecode, BeforeValidator(_split_commas)] = Field(
        default=["cpu"],
        description="Execution providers, in order of preference, for models whose config "
        "names none: cpu, cuda (or gpu), tensorrt (or trt), or full ORT names; e.g. `cuda,cpu`. "
        "CPU is always the last fallback.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=2**34,
        description="Largest request body accepted (64 MiB by default); larger ones get 413 "
        "before being read.",
    )
    strict_readiness: bool = Field(
        default=False,
        description="Ready only when every model is ready (otherwise: when at least one is).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM, seconds that in-flight and queued requests may take to finish.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        ge=0.1,
        le=300,
        description="Seconds a client has to send a request's headers (from connecting, or "
        "from the request's first byte); then 408 and the connection is closed. Real clients "
        "send them in one packet; 10 s still covers several TCP retransmissions.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        ge=0.1,
        le=3600,
        description="Seconds a client has to send a request's body once its headers are in; "
        "then 408 and the connection is closed. 60 s means about 1.1 MB/s for a 64 MiB body: "
        "raise it for large bodies over slow links.",
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Seconds an idle keep-alive connection stays open between requests (also "
        "on SIGTERM, when its next request is answered with `Connection: close`). Set it "
        "above the idle timeout of a load balancer in front, which then closes first.",
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Open connections per process; past it a new connection's request is "
        "answered 503 and the connection closed, and past twice it a new connection is closed "
        "at once, so file descriptors stay bounded. The open-file limit is raised to fit.",
    )
    max_requests_in_flight: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Requests being handled at once per process (read, not yet answered); "
        "past it a request is answered 503 at once. Model queues shed load before this; it "
        "bounds what bodies and tasks can hold in memory.",
    )
    access_log: bool = Field(default=False, description="Log a line for every request.")
    retry_after_s: int = Field(
        default=1,
        ge=0,
        le=3600,
        description="Retry-After (seconds) sent with a 503 for load (a full queue, the "
        "connection or in-flight cap); 0: retry at once.",
    )
    metrics: bool = Field(
        default=True,
        description="Record Prometheus metrics and serve them at `GET /metrics`.",
    )
    control_api: Literal["off", "token", "open"] = Field(
        default="off",
        description="Repository control (load, unload): `off` refuses it (403), `token` needs "
        "`Authorization: Bearer <token>` (the token from INSCALE_CONTROL_TOKEN or the file "
        "INSCALE_CONTROL_TOKEN_FILE names), `open` allows anyone who reaches the port (local "
        "development only). Reads (metadata, stats, health, metrics) are always open.",
    )
    control_token: str | None = Field(
        default=None,
        description="The control token for `--control-api token`. Prefer the variable or a "
        "file to the flag, which other users of the machine can read in the process list.",
    )
    control_token_file: Path | None = Field(
        default=None,
        description="A file holding the control token (a mounted Kubernetes Secret); read "
        "once at start, surrounding whitespace ignored.",
    )
    # Not a flag: `inscale serve` itself points it at a fresh folder when it starts workers.
    metrics_multiprocess_dir: CliSuppress[Path | None] = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="Where worker processes write metric values (prometheus-client's "
        "multiprocess mode). Set by `inscale serve --workers N` to a fresh folder per start; "
        "not set by hand.",
    )

    @model_validator(mode="after")
    def _control_api_can_work(self) -> "ServerSettings":
        # Refused at start, not found out later as a server that cannot be given models.
        if self.model_control is ModelControl.EXPLICIT and self.control_api == "off":
            raise ValueError(
                "--model-control explicit loads models only through the control API, which "
                "is off: set --control-api token (with INSCALE_CONTROL_TOKEN or "
                "INSCALE_CONTROL_TOKEN_FILE) or --control-api open"
            )
        if self.control_api == "token" and not (self.control_token or self.control_token_file):
            raise ValueError(
                "--control-api token needs a token: set INSCALE_CONTROL_TOKEN or "
                "INSCALE_CONTROL_TOKEN_FILE"
            )
        return self

    def repository_path(self) -> Path:
        return self.model_repository if self.model_repository is not None else BUNDLED_REPOSITORY

    def resolved_default_model(self) -> str | None:
        if self.default_model is not None:
            return self.default_model
        return BUNDLED_DEFAULT_MODEL if self.model_repository is None else None


# -- the fields described for people and for worker processes ------------------------------


@dataclass(frozen=True)
class SettingDoc:
    """One setting as `inscale serve --help` and the README table show it."""

    name: str
    flag: str | None  # None: no flag (the server sets it itself)
    env: str
    kind: str  # path, text, integer, number, boolean, list, choice
    choices: tuple[str, ...]  # the allowed values of a choice
    default: str  # as it would be written in the environment; "" when unset
    bounds: str  # "0 to 65535", "at least 1024"; "" when unbounded
    description: str


def setting_docs() -> list[SettingDoc]:
    """Every field of ServerSettings, in declaration order."""
    return [_describe(name, info) for name, info in ServerSettings.model_fields.items()]


def env_name(name: str) -> str:
    info = ServerSettings.model_fields[name]
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return ServerSettings.model_config.get("env_prefix", "") + name.upper()


def flag_name(name: str) -> str | None:
    """The `inscale serve` flag of a field (pydantic-settings' kebab case), None if it has none."""
    info = ServerSettings.model_fields[name]
    return None if CLI_SUPPRESS in info.metadata else "--" + name.replace("_", "-")


def environment(settings: ServerSettings) -> dict[str, str | None]:
    """The environment that rebuilds `settings` in another process (None: leave it unset).

    `inscale serve` applies it before uvicorn starts workers, which read only the environment.
    """
    return {
        env_name(name): env_text(getattr(settings, name)) for name in ServerSettings.model_fields
    }


def env_text(value: object) -> str | None:
    """A value spelled as its environment variable expects it (None for an unset value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _describe(name: str, info: FieldInfo) -> SettingDoc:
    kind, choices = _kind(info.annotation)
    default = info.get_default(call_default_factory=True)
    return SettingDoc(
        name=name,
        flag=flag_name(name),
        env=env_name(name),
        kind=kind,
        choices=choices,
        default=env_text(default) or "",
        bounds=_bounds(info),
        description=info.description or "",
    )


_KINDS: dict[Any, str] = {
    Path: "path",
    str: "text",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "list",
}


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:  # `X | None`: unset is the default
        (inner,) = (arg for arg in get_args(annotation) if arg is not type(None))
        return _kind(inner)
    if origin is Literal:
        return "choice", tuple(str(arg) for arg in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "choice", tuple(str(member.value) for member in annotation)
    kind = _KINDS.get(origin or annotation)
    if kind is None:
        raise TypeError(f"setting type {annotation!r} has no description: add it to _KINDS")
    return kind, ()


def _bounds(info: FieldInfo) -> str:
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    if any(isinstance(m, annotated_types.Gt | annotated_types.Lt) for m in info.metadata):
        raise TypeError(f"setting {info.alias or ''}: use ge/le bounds, which the docs can show")
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return ""
