"""Execution provider selection: the user's preference, filtered by what this ONNX Runtime
build offers, always ending in CPU.

What a session really uses is read back from `session.get_providers()` by the runtime:
onnxruntime-gpu lists CUDA as available even with no GPU and then silently falls back to CPU.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    name: str
    options: dict[str, str] = field(default_factory=dict)


def canonical_name(name: str) -> str:
    return ALIASES.get(name.strip().lower(), name.strip())


def choose_providers(
    requested: Sequence[tuple[str, dict[str, object]]], available: Sequence[str]
) -> list[ProviderChoice]:
    """Keep requested providers this build has, in order; append CPU if it is missing.

    Options are turned into strings because that is what ORT's provider options take.
    """
    chosen: list[ProviderChoice] = []
    for raw_name, options in requested:
        name = canonical_name(raw_name)
        if name not in available:
            log.warning("execution provider %s is not available in this build; skipped", name)
            continue
        if any(c.name == name for c in chosen):
            continue
        chosen.append(ProviderChoice(name, {k: _option_text(v) for k, v in options.items()}))
    if not any(c.name == CPU for c in chosen):
        chosen.append(ProviderChoice(CPU))
    return chosen


def _option_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
