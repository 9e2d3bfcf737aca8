"""Models on disk: a folder per model, numbered version folders holding `model.onnx`.

This module only reads the folder and decides what would be loaded; loading is the
registry's job. `inscale models` prints what `describe` finds for each model, so a user can
see why a model would not load without starting the server.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from inscale.errors import InscaleError, InvalidInput, ModelNotFound, quoted
from inscale.models.config import ModelConfig, find_config_file, load_model_config

MODEL_FILENAME = "model.onnx"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model folder as found on disk, with the versions its policy selects."""

    name: str
    directory: Path
    config: ModelConfig | None  # None when the config file is invalid
    config_file: Path | None
    versions: tuple[int, ...]  # selected by the version policy, ascending
    problems: tuple[str, ...] = field(default=())  # why it (or some version) cannot load

    def model_path(self, version: int) -> Path:
        return self.directory / str(version) / MODEL_FILENAME


# A folder name's longest on Linux file systems (NAME_MAX, in bytes): a longer name would make
# the first file system call fail with "File name too long", so it is refused before any.
MAX_NAME_BYTES = 255


def check_model_name(name: str) -> None:
    """A model name must be a plain folder name: no separators, no `..`, nothing hidden, no
    control or non-printable characters, and short enough for the file system."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidInput(
            f"model name {quoted(name)} is too long: a folder name takes at most "
            f"{MAX_NAME_BYTES} bytes"
        )
    if not _PLAIN_NAME.match(name) or name in (".", ".."):
        raise InvalidInput(
            f"{quoted(name)} is not a valid model name (a plain folder name is needed)"
        )


def parse_version(text: str | None) -> int | None:
    """A version as a request names it (a numbered folder); empty: the newest ready one."""
    if text is None or text == "":
        return None
    # At most 20 digits: int() refuses strings past Python's digit limit (4,300) with a
    # ValueError, and no folder is numbered past 2**64 anyway.
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or int(text) < 1:
        raise InvalidInput(f"model version {quoted(text)} is not a positive integer")
    return int(text)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _PLAIN_NAME.match(p.name)
        )

    def describe(self, name: str) -> ModelSource:
        check_model_name(name)
        directory = self.root / name
        if not directory.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository {self.root}")
        problems: list[str] = []
        config: ModelConfig | None
        try:
            config_file = find_config_file(directory)
            config = load_model_config(directory)
        except InscaleError as exc:
            config_file, config = None, None
            problems.append(exc.message)
        available = _numbered_versions(directory)
        if not available:
            problems.append(
                f"no version folder with {MODEL_FILENAME} (expected {name}/1/{MODEL_FILENAME})"
            )
        policy = config.versions if config is not None else "latest"
        if policy == "latest":
            selected = available[-1:]
        elif policy == "all":
            selected = available
        else:
            missing = sorted(set(policy) - set(available))
            if missing:
                problems.append(f"listed versions not found: {', '.join(map(str, missing))}")
            selected = [v for v in available if v in policy]
        return ModelSource(name, directory, config, config_file, tuple(selected), tuple(problems))


def _numbered_versions(directory: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in directory.iterdir()
        # Versions are positive, as in Triton; "0" is not a version folder.
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILENAME).is_file()
    )
