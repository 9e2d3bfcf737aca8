"""A model's optional config file (`config.yaml`, `config.yml` or `config.toml`), typed.

Everything has a default that suits most models, so a model folder with no config file
serves with dynamic batching on (when its first axis is dynamic) and CPU execution. Unknown
keys are errors: a misspelt `max_batch_sise` must not be silently ignored.
"""

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    max_request_rows: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Rows one request may carry. A request with more rows than "
        "max_batch_size is split into chunks of at most max_batch_size rows, batched like "
        "any others and reassembled in order; past this limit it is refused (400). The body "
        "limit (--max-body-mb) applies as well.",
    )
    admission: bool = Field(
        default=True,
        description="Refuse at once (503, Retry-After) a request that the learned run costs "
        "say cannot finish before its deadline, and drop a queued one whose run could no "
        "longer end in time. Turn off for a model whose run time depends on its input values "
        "far more than on its rows, where the estimate cannot be trusted.",
    )
    priority_levels: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Priority levels, as Triton's: a request's `priority` parameter 1 is the "
        "highest, priority_levels the lowest, 0 means default_priority_level. Higher levels "
        "are batched first, and a full queue pushes out the newest request of the lowest "
        "level to admit a higher one.",
    )
    default_priority_level: int = Field(
        default=0,
        ge=0,
        le=16,
        description="The level of a request that gives no priority; 0 means the lowest.",
    )
    max_starvation_ms: float = Field(
        default=500,
        gt=0,
        le=3_600_000,
        description="A lower-priority request that has waited this long goes into the next "
        "batch ahead of higher levels, so low priority still progresses under load.",
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_positive(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("preferred batch sizes must be positive")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _levels_agree(self) -> "BatchingConfig":
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is past priority_levels "
                f"{self.priority_levels}"
            )
        return self

    def level_of(self, priority: int) -> int:
        """The queue index (0 first) of a request's `priority` parameter (already checked
        to be within 0..priority_levels)."""
        if priority == 0:
            priority = self.default_priority_level or self.priority_levels
        return priority - 1


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


class DriftConfig(_Strict):
    """Input and output drift against the model's reference profile (drift_reference.json)."""

    enabled: bool = Field(
        default=True, description="Monitor drift when the model has a reference profile."
    )
    sample: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Share of served rows compared with the reference; the copy is all the "
        "request path pays, the binning runs in the background once a second.",
    )
    window_s: float = Field(
        default=600, gt=0, le=7 * 86400, description="Length of the sliding window scored."
    )
    features: Literal["all"] | list[str] = Field(
        default="all",
        description="Input features to monitor: all, or a list of input names (every column) "
        'and feature names such as input[3] (quoted in YAML: ["input[3]"]).',
    )
    top_k: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Input features exported by name: the k with the highest PSI. The worst "
        "and the mean over all monitored features are exported as well.",
    )


VersionPolicy = Literal["latest", "all"] | list[int]


class ModelConfig(_Strict):
    """Per-model settings. Every field is optional."""

    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    timeout_ms: float = Field(
        default=10_000, gt=0, le=3_600_000, description="Default per-request deadline."
    )
    latency_slo_ms: float | None = Field(
        default=None,
        gt=0,
        le=3_600_000,
        description="The latency objective (p99, end to end) this model promises. When set, "
        "a request that cannot finish within it (or its own deadline, if sooner) is refused "
        "at once with 503 and Retry-After instead of queueing to fail later, and a forming "
        "batch waits for more rows only while the learned run costs say that pays and still "
        "ends inside it (max_queue_delay_ms is then not used). Unset: greedy batching.",
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
    drift: DriftConfig = Field(default_factory=DriftConfig)

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
