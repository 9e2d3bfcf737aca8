"""A model's optional config file (`config.yaml`, `config.yml` or `config.toml`), typed.

Everything has a default that suits most models, so a model folder with no config file
serves with dynamic batching on (when its first axis is dynamic) and CPU execution. Unknown
keys are errors: a misspelt `max_batch_sise` must not be silently ignored.
"""

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inscale.errors import ConfigError

CONFIG_FILENAMES = ("config.yaml", "config.yml", "config.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Strict):
    """Dynamic batching. Defaults are measured on the bundled models (see README)."""

    enabled: bool = Field(default=True, description="Merge concurrent requests into batches.")
    max_batch_size: int = Field(default=32, ge=1, le=65536, description="Rows per model run.")
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=60_000,
        description="How long a forming batch may wait for more rows once requests queue up. "
        "A lone request on an idle model is never held back. The default 0 lets an idle "
        "instance take whatever is queued: under load, batches form while instances are "
        "busy, and on the bundled models waiting 1 ms gained nothing at concurrency 32 and "
        "cost up to 30% of throughput on light models at concurrency 8.",
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes to cut at when the queue allows."
    )
    max_queue_size: int = Field(
        default=1024, ge=1, le=1_000_000, description="Queued requests before 503."
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_positive(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("preferred batch sizes must be positive")
        return sorted(set(sizes))


class PaddingConfig(_Strict):
    """An input whose `axis` varies per request; requests are padded to the longest."""

    axis: int = Field(ge=1, description="Axis that varies (the batch axis 0 cannot).")
    value: float = Field(default=0, description="Pad value, cast to the input's dtype.")
    outputs: dict[str, int] = Field(
        default_factory=dict,
        description="Output name -> axis trimmed back to the request's length. Outputs whose "
        "dim shares the input's symbolic name in the graph are trimmed without being listed.",
    )


class ProviderConfig(_Strict):
    name: str
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class RuntimeConfig(_Strict):
    """ONNX Runtime session options."""

    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Threads per run; 0 means one per CPU this process may use (its affinity "
        "mask, so taskset and container CPU sets are respected).",
    )
    inter_op_threads: int = Field(default=0, ge=0, le=1024)
    allow_spinning: bool = Field(
        default=True,
        description="Let idle intra-op threads spin: lower latency per run, but the spinning "
        "takes CPU from the event loop when cores are shared.",
    )
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"


VersionPolicy = Literal["latest", "all"] | list[int]


class ModelConfig(_Strict):
    """Per-model settings. Every field is optional."""

    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    timeout_ms: float = Field(
        default=10_000, gt=0, le=3_600_000, description="Default per-request deadline."
    )
    instances: int = Field(
        default=1, ge=1, le=64, description="Sessions running batches in parallel."
    )
    padding: dict[str, PaddingConfig] = Field(default_factory=dict)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    providers: list[ProviderConfig | str] | None = Field(
        default=None, description="Execution providers in order of preference; None: server's."
    )
    versions: VersionPolicy = Field(
        default="latest", description="Which numbered versions to serve: latest, all, or a list."
    )
    warmup: bool = Field(default=True, description="Run every preferred batch size at load.")

    def provider_specs(self) -> list[ProviderConfig] | None:
        if self.providers is None:
            return None
        return [
            p if isinstance(p, ProviderConfig) else ProviderConfig(name=p) for p in self.providers
        ]


def find_config_file(model_dir: Path) -> Path | None:
    present = [model_dir / name for name in CONFIG_FILENAMES if (model_dir / name).is_file()]
    if len(present) > 1:
        names = ", ".join(p.name for p in present)
        raise ConfigError(f"model '{model_dir.name}' has several config files ({names}); keep one")
    return present[0] if present else None


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read and validate a model folder's config, or the defaults when it has none."""
    path = find_config_file(model_dir)
    if path is None:
        return ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    if raw is None:
        return ModelConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
