"""The knobs `inscale profile` searches, their value lists, and what a trial's config means
for the model's config file and the server's flags.

A config is a plain dict with every knob (`Config`): it goes into results.json as it is, and
two configs are the same trial when their dicts are equal. Default ranges depend on the cores
the servers are pinned to; every knob's list can be replaced on the command line.
"""

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from inscale.model_folder import ToolError
from inscale.models.config import ModelConfig

Config = dict[str, float]

# In the order a config is printed, and hill-climbing steps through them.
KNOBS = ("max_batch_size", "max_queue_delay_ms", "instances", "intra_op_threads", "workers")
INTEGER_KNOBS = frozenset({"max_batch_size", "instances", "intra_op_threads", "workers"})


class SpaceError(ToolError):
    """A search space that cannot be searched: an empty list, a value out of bounds."""


@dataclass(frozen=True)
class Space:
    values: dict[str, list[float]]  # knob -> ascending values

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.values.values())

    def grid(self) -> Iterator[Config]:
        for combination in itertools.product(*(self.values[k] for k in KNOBS)):
            yield dict(zip(KNOBS, combination, strict=True))

    def snap(self, config: Config) -> Config:
        """The config in this space nearest to `config`, knob by knob (for the default)."""
        return {k: _nearest(self.values[k], config[k]) for k in KNOBS}

    def neighbours(self, config: Config) -> Iterator[Config]:
        """Configs one step up or down one knob's list: hill-climbing's moves."""
        for knob in KNOBS:
            values = self.values[knob]
            index = values.index(config[knob])
            for step in (-1, 1):
                if 0 <= index + step < len(values):
                    yield {**config, knob: values[index + step]}

    def as_json(self) -> dict[str, list[float]]:
        return {k: list(self.values[k]) for k in KNOBS}


def _nearest(values: list[float], target: float) -> float:
    return min(values, key=lambda value: abs(value - target))


def _powers_of_two_up_to(limit: int) -> list[float]:
    values = [1]
    while values[-1] * 2 <= limit:
        values.append(values[-1] * 2)
    if values[-1] != limit:
        values.append(limit)
    return [float(v) for v in values]


def default_values(cores: int, model: ModelConfig) -> dict[str, list[float]]:
    """Ranges suited to `cores`: batch sizes around the default 32, a queue delay only when
    the model has no latency objective (with one, the batcher ignores max_queue_delay_ms and
    waits as the learned run costs say), up to one instance, thread and worker per core."""
    delays = [model.batching.max_queue_delay_ms]
    if model.latency_slo_ms is None:
        delays = sorted({*delays, 0.0, 2.0})
    return {
        "max_batch_size": [8.0, 32.0, 128.0],
        "max_queue_delay_ms": delays,
        "instances": _powers_of_two_up_to(max(2, cores)),
        "intra_op_threads": _powers_of_two_up_to(cores),
        "workers": _powers_of_two_up_to(cores),
    }


def build_space(cores: int, model: ModelConfig, overrides: dict[str, list[float]]) -> Space:
    values = default_values(cores, model)
    for knob, given in overrides.items():
        if knob not in values:
            raise SpaceError(f"unknown knob {knob!r}; the knobs are {', '.join(KNOBS)}")
        if not given:
            raise SpaceError(f"--{knob.replace('_', '-')} lists no value")
        values[knob] = sorted(set(given))
    for knob in KNOBS:
        for value in values[knob]:
            _check(knob, value)
    return Space(values)


def _check(knob: str, value: float) -> None:
    flag = "--" + knob.replace("_", "-")
    if knob in INTEGER_KNOBS and (value != int(value) or value < 1):
        raise SpaceError(f"{flag}: {value:g} is not a whole number of at least 1")
    if knob == "max_queue_delay_ms" and not 0 <= value <= 60_000:
        raise SpaceError(f"{flag}: {value:g} is outside 0 to 60000")
    if knob in ("instances", "intra_op_threads", "workers") and value > 64:
        raise SpaceError(f"{flag}: {value:g} is more than 64")
    if knob == "max_batch_size" and value > 65536:
        raise SpaceError(f"{flag}: {value:g} is more than 65536")


def parse_values(text: str, knob: str) -> list[float]:
    """`8,32,128` as numbers; the message names the flag."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpaceError(
            f"--{knob.replace('_', '-')}: {text!r} is not a comma-separated list of numbers"
        ) from None


def config_of(model: ModelConfig, cores: int) -> Config:
    """The knobs as the model's own config (and a one-worker server) set them."""
    threads = model.runtime.intra_op_threads or cores  # 0: one per CPU of the affinity mask
    return {
        "max_batch_size": float(model.batching.max_batch_size),
        "max_queue_delay_ms": float(model.batching.max_queue_delay_ms),
        "instances": float(model.instances),
        "intra_op_threads": float(threads),
        "workers": 1.0,
    }


def model_config_with(model: ModelConfig, config: Config) -> dict[str, Any]:
    """The model's config with a trial's knobs in it, as the mapping a config.yaml holds.

    Only what differs from the defaults is written, so the file stays one a person would
    write; `workers` is a server flag and goes elsewhere.
    """
    batching = model.batching.model_copy(
        update={
            "max_batch_size": int(config["max_batch_size"]),
            "max_queue_delay_ms": config["max_queue_delay_ms"],
        }
    )
    runtime = model.runtime.model_copy(update={"intra_op_threads": int(config["intra_op_threads"])})
    merged = model.model_copy(
        update={"batching": batching, "runtime": runtime, "instances": int(config["instances"])}
    )
    # Validated again: a knob's value must be one the server would accept.
    checked = ModelConfig.model_validate(merged.model_dump())
    written: dict[str, Any] = checked.model_dump(mode="json", exclude_defaults=True)
    return written


def describe(config: Config) -> str:
    return " ".join(f"{k}={config[k]:g}" for k in KNOBS)
