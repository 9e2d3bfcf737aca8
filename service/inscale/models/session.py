"""ONNX Runtime sessions: creation with provider fallback, and running one batch.

Nothing CUDA-specific is imported here: the GPU path is the same `onnxruntime` module,
installed from the `onnxruntime-gpu` wheel, with CUDA listed first in the providers.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inscale.errors import ModelLoadError
from inscale.models.config import RuntimeConfig
from inscale.models.providers import CPU, ProviderChoice, choose_providers

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXEC_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


@dataclass(frozen=True, slots=True)
class OrtSession:
    """One loaded ONNX Runtime session and the providers it really runs on."""

    inner: ort.InferenceSession
    providers: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.inner.run(list(self.output_names), dict(feeds))
        return dict(zip(self.output_names, results, strict=True))


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # ORT's own default (0) starts a thread per physical core and pins each one, escaping
    # taskset and CPU sets: the server then competes with whatever owns the other cores.
    # Sizing the pool from our affinity mask keeps ORT where the process was put.
    options.intra_op_num_threads = config.intra_op_threads or len(os.sched_getaffinity(0))
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if config.allow_spinning else "0"
    )
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    options.execution_mode = _EXEC_MODES[config.execution_mode]
    # Errors and warnings from ORT reach our logs through its own logger at this level.
    options.log_severity_level = 3
    return options


def open_session(
    path: Path,
    config: RuntimeConfig,
    requested: list[tuple[str, dict[str, object]]],
) -> OrtSession:
    """Create a session on the first usable provider, retrying on CPU if the accelerator fails.

    A GPU provider can fail at creation (driver or library missing) or be silently dropped by
    ORT; both end on CPU, and the log says which happened.
    """
    chosen = choose_providers(requested, ort.get_available_providers())
    try:
        inner = _create(path, config, chosen)
    except ModelLoadError:
        raise
    except Exception as exc:
        if [c.name for c in chosen] == [CPU]:
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        log.warning("providers %s failed (%s); falling back to CPU", [c.name for c in chosen], exc)
        try:
            inner = _create(path, config, [ProviderChoice(CPU)])
        except Exception as cpu_exc:
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {cpu_exc}") from cpu_exc
    in_use = tuple(inner.get_providers())
    wanted = chosen[0].name
    if in_use[0] != wanted:
        log.warning("%s: asked for %s, running on %s", path, wanted, in_use[0])
    return OrtSession(inner, in_use, tuple(o.name for o in inner.get_outputs()))


def _create(
    path: Path, config: RuntimeConfig, chosen: list[ProviderChoice]
) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    return ort.InferenceSession(
        str(path),
        sess_options=session_options(config),
        providers=[c.name for c in chosen],
        provider_options=[c.options for c in chosen],
    )
