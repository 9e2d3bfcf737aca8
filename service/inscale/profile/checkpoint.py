"""The sweep's checkpoint: every finished trial, written after each one, so running the same
command again carries on where an interrupted sweep stopped.

The file names what it is a sweep of (model file, cores, levels, objective, space). A folder
whose checkpoint is of another sweep is refused rather than mixed: its trials would be
measured under other conditions.
"""

import json
import os
from pathlib import Path
from typing import Any

from inscale.model_folder import ToolError

CHECKPOINT = "checkpoint.json"


class CheckpointError(ToolError):
    """The output folder holds something this sweep must not overwrite or resume."""


def sweep_identity(model_file: Path, **conditions: Any) -> dict[str, Any]:
    """What must be equal for two runs to be one sweep. The model file is known by its size
    and modification time: hashing a multi-gigabyte file on every start would cost minutes."""
    stat = model_file.stat()
    return {
        "model_file": str(model_file.resolve()),
        "model_bytes": stat.st_size,
        "model_mtime_ns": stat.st_mtime_ns,
        **conditions,
    }


def open_folder(out: Path, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """Create `out`, or resume from its checkpoint: the trials already done."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        saved = _read(out / CHECKPOINT, out)
        if saved.get("identity") != _round_trip(identity):
            raise CheckpointError(
                f"--out {out} holds a checkpoint of a different sweep (another model, cores, "
                "levels, objective or space); give a new folder, or remove this one"
            )
        trials: list[dict[str, Any]] = saved.get("trials", [])
        return trials
    try:
        out.mkdir(parents=True, exist_ok=True)
        save(out, identity, [])
    except OSError as exc:
        raise CheckpointError(f"--out {out} cannot be written: {exc.strerror}") from exc
    return []


def save(out: Path, identity: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Write whole or not at all: a crash mid-write leaves the previous checkpoint."""
    partial = out / f".{CHECKPOINT}.partial"
    partial.write_text(json.dumps({"identity": identity, "trials": trials}, indent=1))
    os.replace(partial, out / CHECKPOINT)


def _read(path: Path, out: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"--out {out} is not empty and holds no {CHECKPOINT}: give a new or empty folder"
        )
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); remove it to start over") from exc
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} is not a checkpoint; remove it to start over")
    return saved


def _round_trip(identity: dict[str, Any]) -> Any:
    """As it reads back from JSON (tuples become lists, int keys strings)."""
    return json.loads(json.dumps(identity))
