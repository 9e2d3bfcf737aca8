"""What the command-line tools (`optimize`, `profile`, `reference`) share about a model
folder: which version file they work on, opening it with ONNX Runtime, and asking a running
server to load the folder again.

The server itself never imports this: its loading is `models/repository.py`'s.
"""

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import onnxruntime as ort

from inscale.errors import InscaleError, quoted
from inscale.models.config import ModelConfig, load_model_config
from inscale.models.repository import MODEL_FILENAME


class ToolError(InscaleError):
    """What a command-line tool was asked cannot be done; the message says why."""


def version_file(model_dir: Path, version: int | None) -> tuple[int, Path]:
    """The version asked for (default: the newest) and its model file."""
    if not model_dir.is_dir():
        raise ToolError(f"model folder {quoted(str(model_dir))} does not exist")
    versions = sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.name.isdigit() and (p / MODEL_FILENAME).is_file()
    )
    if not versions:
        raise ToolError(
            f"model folder {quoted(str(model_dir))} has no version folder with {MODEL_FILENAME}"
        )
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise ToolError(f"model folder {quoted(str(model_dir))} has no version {chosen}")
    return chosen, model_dir / str(chosen) / MODEL_FILENAME


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a one-line refusal (ORT's messages run to pages)."""
    text = exc.message if isinstance(exc, InscaleError) else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:500]


def cpu_session(model_file: Path) -> Any:
    """An ONNX Runtime session on CPU (typed loosely: ORT has no stubs), or a refusal."""
    try:
        return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types: whatever it is, not a loadable model
        raise ToolError(
            f"{model_file} cannot be loaded by ONNX Runtime: {first_line(exc)}"
        ) from exc


def token_from_env() -> str | None:
    """The control API token a tool sends with `--server`, as the server reads it."""
    return os.environ.get("INSCALE_CONTROL_TOKEN") or None


def read_config(model_dir: Path) -> ModelConfig:
    """The folder's config, or a refusal that says what is wrong with it."""
    try:
        return load_model_config(model_dir)
    except InscaleError as exc:
        raise ToolError(f"the model's config cannot be read: {exc.message}") from exc


def ask_server_to_load(server: str, name: str, token: str | None, done: str) -> None:
    """POST the repository API's load for `name`: the server reads the folder again (new
    versions, a new config) and swaps once the new sessions are warm.

    `done` says what already happened on disk, for the message when the server refuses.
    The standard library's client: the server's own dependencies have no HTTP client.
    """
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{server.rstrip('/')}/v2/repository/models/{name}/load"
    request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300):
            return
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        raise ToolError(f"{done}, but the server refused to load it ({exc.code}): {body}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ToolError(
            f"{done}, but the server at {server} could not be asked to load it: {exc}"
        ) from exc
