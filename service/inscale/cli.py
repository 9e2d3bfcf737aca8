"""`inscale serve` and `inscale models`.

Flags are written into INSCALE_* environment variables and the settings are read from the
environment, so worker processes (`--workers N`) see exactly what the parent saw.
"""

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from inscale import __version__
from inscale.errors import InscaleError
from inscale.logs import configure_logging
from inscale.models.repository import ModelRepository, ModelSource
from inscale.models.session import open_session
from inscale.settings import ServerSettings

_SERVE_FLAGS = {
    "model_repository": "INSCALE_MODEL_REPOSITORY",
    "host": "INSCALE_HOST",
    "port": "INSCALE_PORT",
    "workers": "INSCALE_WORKERS",
    "log_level": "INSCALE_LOG_LEVEL",
    "log_format": "INSCALE_LOG_FORMAT",
    "model_control": "INSCALE_MODEL_CONTROL",
    "default_model": "INSCALE_DEFAULT_MODEL",
    "providers": "INSCALE_PROVIDERS",
    "access_log": "INSCALE_ACCESS_LOG",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inscale", description="ONNX model serving.")
    parser.add_argument("--version", action="version", version=f"inscale {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository over HTTP")
    serve.add_argument("--model-repository", type=Path, help="default: the bundled models")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--log-format", choices=["json", "text"])
    serve.add_argument(
        "--model-control",
        choices=["all", "explicit"],
        help="all: load every model at start; explicit: only what the API loads",
    )
    serve.add_argument("--default-model", help="model for /predict requests that name none")
    serve.add_argument("--providers", help="comma-separated, e.g. cuda,cpu (default cpu)")
    serve.add_argument("--access-log", action="store_true", default=None, help="log every request")

    models = commands.add_parser("models", help="list what a repository would load, and why not")
    models.add_argument("repository", nargs="?", type=Path, help="default: the bundled models")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "models":
        return _list_models(args.repository)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    for attr, env in _SERVE_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            os.environ[env] = str(value.resolve() if isinstance(value, Path) else value)
    try:
        settings = ServerSettings()
    except ValidationError as exc:
        print(f"inscale: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    with _metrics_folder(settings):
        _run_uvicorn(settings, settings.access_log)
    return 0


def _run_uvicorn(settings: ServerSettings, access_log: bool) -> None:
    uvicorn.run(
        "inscale.http.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # ours, set above (and again in each worker by the factory)
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        backlog=2048,
        server_header=False,
    )


@contextlib.contextmanager
def _metrics_folder(settings: ServerSettings) -> Iterator[None]:
    """With several workers, metric values live in files: a fresh folder per start.

    prometheus-client picks its multiprocess mode from PROMETHEUS_MULTIPROC_DIR when it is
    imported, so the variable is set here, before uvicorn starts the workers; the folder is
    removed when the server exits. One worker keeps its values in memory.
    """
    if settings.workers == 1 or not settings.metrics:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # not one inherited from elsewhere
        yield
        return
    folder = tempfile.mkdtemp(prefix="inscale-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open_each_version(source: ModelSource) -> list[str]:
    """Open every selected version with ONNX Runtime on CPU: a corrupt file shows up here."""
    assert source.config is not None
    problems = []
    for version in source.versions:
        try:
            open_session(source.model_path(version), source.config.runtime, [("cpu", {})])
        except InscaleError as exc:
            problems.append(f"version {version}: {exc.message}")
    return problems


def _list_models(path: Path | None) -> int:
    settings = ServerSettings(model_repository=path) if path else ServerSettings()
    repository = ModelRepository(settings.repository_path())
    if not repository.root.is_dir():
        print(f"inscale: {repository.root} is not a folder", file=sys.stderr)
        return 2
    print(f"repository: {repository.root}")
    failures = 0
    for name in repository.names():
        try:
            source = repository.describe(name)
        except InscaleError as exc:
            print(f"  {name}: cannot load: {exc.message}")
            failures += 1
            continue
        versions = ", ".join(map(str, source.versions)) or "none"
        problems = list(source.problems) or _open_each_version(source)
        status = "ok" if not problems else "cannot load: " + "; ".join(problems)
        config = source.config_file.name if source.config_file else "no config (defaults)"
        print(f"  {name}: versions {versions}; {config}; {status}")
        failures += bool(problems)
    if not repository.names():
        print("  (no model folders)")
    return 1 if failures else 0
