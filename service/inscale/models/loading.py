"""Loading one model version: open its sessions, check its config against the graph, warm up."""

import logging
from collections.abc import Sequence
from pathlib import Path

from inscale.batch_arrays import PadRule
from inscale.drift import reference
from inscale.drift.monitor import DriftMonitor
from inscale.errors import ConfigError, InscaleError
from inscale.events import ModelEvents
from inscale.models.config import ModelConfig
from inscale.models.session import open_session
from inscale.models.version import ModelVersion
from inscale.signature import Signature, signature_of

log = logging.getLogger(__name__)


def load_version(
    name: str,
    version: int,
    path: Path,
    config: ModelConfig,
    default_providers: Sequence[str],
    metrics: ModelEvents | None = None,
) -> ModelVersion:
    """Blocking: run it in a thread. `metrics` also receives the version's events."""
    specs = config.provider_specs()
    requested: list[tuple[str, dict[str, object]]] = (
        [(p.name, dict(p.options)) for p in specs]
        if specs is not None
        else [(p, {}) for p in default_providers]
    )
    sessions = [open_session(path, config.runtime, requested) for _ in range(config.instances)]
    signature = signature_of(sessions[0].inner)
    pads = _pad_rules(name, signature, config)
    drift, note = _drift(name, version, path, config, signature)
    model = ModelVersion(name, version, config, sessions, signature, pads, metrics, drift, note)
    if config.warmup:
        model.warm_up()
    log.info(
        "loaded model %s version %d on %s (batching %s)",
        name,
        version,
        model.providers[0],
        "on" if model.batching else "off",
    )
    return model


def _drift(
    name: str, version: int, path: Path, config: ModelConfig, signature: Signature
) -> tuple[DriftMonitor | None, str | None]:
    """The version's drift monitor, or None and why. A reference that is missing means no
    drift; one that is broken is logged as a warning naming the file, and the model serves
    without drift rather than not at all."""
    if not config.drift.enabled:
        return None, "drift.enabled is false in the model's config"
    if config.drift.sample == 0:
        return None, "drift.sample is 0 in the model's config"
    found = reference.find(path.parent.parent, version)
    if found is None:
        return None, f"no {reference.REFERENCE_FILE} in the model's folder"
    try:
        monitor = DriftMonitor(reference.load(found, signature), config.drift, seed=version)
    except (InscaleError, ValueError) as exc:
        why = exc.message if isinstance(exc, InscaleError) else str(exc)
        log.warning("model %s version %d: drift is off: %s", name, version, why)
        return None, why
    return monitor, None


def _pad_rules(name: str, signature: Signature, config: ModelConfig) -> list[PadRule]:
    rules = []
    for input_name, pad in config.padding.items():
        spec = signature.input(input_name)
        if spec is None:
            raise ConfigError(f"model '{name}': padding names unknown input '{input_name}'")
        if pad.axis >= len(spec.shape):
            raise ConfigError(f"model '{name}': input '{input_name}' has no axis {pad.axis} to pad")
        outputs = dict(pad.outputs)
        symbol = spec.dim_names[pad.axis]
        for out in signature.outputs:
            for axis, dim_name in enumerate(out.dim_names):
                if symbol is not None and dim_name == symbol and out.name not in outputs:
                    outputs[out.name] = axis
        unknown = set(outputs) - {o.name for o in signature.outputs}
        if unknown:
            raise ConfigError(f"model '{name}': padding trims unknown output '{min(unknown)}'")
        rules.append(PadRule(input_name, pad.axis, pad.value, outputs))
    return rules
