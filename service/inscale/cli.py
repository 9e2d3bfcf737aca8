"""`inscale serve`, `inscale models [DIR]`, `inscale optimize MODEL_DIR` and `inscale --version`.

argparse gives the command line its shape (`--version` and the two subcommands); pydantic-settings
adds one `serve` flag per ServerSettings field to the `serve` subparser, so a new setting is a
flag with no change here. Precedence is pydantic-settings': flag, then environment, then default.
Worker processes (`--workers N`) read only the environment, so the parent writes every resolved
setting back into it (`settings.environment`) before uvicorn starts them.
"""

import argparse
import contextlib
import logging
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp, CliSettingsSource

from inscale import __version__
from inscale.errors import InscaleError
from inscale.logs import configure_logging
from inscale.models.repository import ModelRepository, ModelSource
from inscale.models.session import open_session
from inscale.optimize.variants import VARIANTS
from inscale.settings import ServerSettings, SettingDoc, environment, setting_docs

_DOCS = {doc.name: doc for doc in setting_docs()}
# A validation error names a field by its name, or by its alias for PROMETHEUS_MULTIPROC_DIR.
_DOCS_BY_KEY = {**_DOCS, **{doc.env: doc for doc in _DOCS.values()}}
_METAVARS = {"path": "PATH", "text": "TEXT", "integer": "INT", "number": "NUMBER", "list": "A,B"}
# uvicorn's httptools protocol with our read timeouts, caps and drain accounting; named as a
# string so that worker processes import it themselves.
_HTTP_PROTOCOL = "inscale.http.guarded_protocol:GuardedHttpToolsProtocol"
# Files a process holds besides client connections: models, metric files, gRPC, logs.
_OTHER_FILES = 1024

log = logging.getLogger(__name__)

SettingsFlags = CliSettingsSource[argparse.ArgumentParser]


def _parser() -> tuple[argparse.ArgumentParser, SettingsFlags]:
    parser = argparse.ArgumentParser(prog="inscale", description="ONNX model serving.")
    parser.add_argument("--version", action="version", version=f"inscale {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve a model repository over HTTP",
        description="Serve a model repository over HTTP. Every flag is also an environment "
        "variable (shown in brackets); a flag beats its variable, which beats the default.",
    )
    flags: SettingsFlags = CliSettingsSource(
        ServerSettings, root_parser=serve, add_argument_method=_add_setting_flag
    )

    models = commands.add_parser("models", help="list what a repository would load, and why not")
    models.add_argument("repository", nargs="?", type=Path, help="default: the bundled models")
    _add_optimize(commands)
    return parser, flags


def _add_optimize(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    optimize = commands.add_parser(
        "optimize",
        help="make smaller, faster variants of a model and measure them side by side",
        description="Make smaller, faster variants of a model (graph-optimized, int8, fp16), "
        "measure each next to the original, and optionally install one as the next version.",
    )
    optimize.add_argument("model_dir", type=Path, help="a model folder in a repository")
    optimize.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    optimize.add_argument("--version", type=int, help="default: the newest version")
    optimize.add_argument(
        "--samples", type=Path, help=".npz, .npy or JSON rows (default: the folder's samples.*)"
    )
    optimize.add_argument(
        "--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all that apply)"
    )
    optimize.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="how far below the original's accuracy (or agreement) a variant may score and "
        "still be installed (default: 0.01)",
    )
    optimize.add_argument(
        "--batch-sizes",
        default="1,8,32",
        help="comma-separated, latency measured at each (default: 1,8,32)",
    )
    optimize.add_argument("--install", choices=VARIANTS, help="add this variant as a new version")
    optimize.add_argument(
        "--server",
        help="with --install: ask this server (URL) to load the new version; it needs "
        "--control-api open, or token with INSCALE_CONTROL_TOKEN set here too",
    )


def _add_setting_flag(
    parser: argparse.ArgumentParser, *names: str, **kwargs: Any
) -> argparse.Action | None:
    """pydantic-settings' hook for adding a flag: help and metavar from `setting_docs()`.

    The README table is built from the same descriptions, so the two cannot disagree.
    """
    if kwargs.get("help") == argparse.SUPPRESS:
        return None  # a field the server sets itself is no flag at all, not a hidden one
    doc = _DOCS[kwargs["dest"]]
    kwargs["help"] = _help(doc)
    if "metavar" in kwargs:  # booleans have none: they are --flag / --no-flag
        kwargs["metavar"] = (
            "{" + ",".join(doc.choices) + "}" if doc.choices else _METAVARS[doc.kind]
        )
    return parser.add_argument(*names, **kwargs)


def _help(doc: SettingDoc) -> str:
    limits = f"{doc.bounds}; " if doc.bounds else ""
    default = doc.default or "unset"
    text = f"{doc.description} ({limits}default: {default}) [env: {doc.env}]"
    return text.replace("`", "").replace("%", "%%")  # argparse formats help with %


def main(argv: list[str] | None = None) -> int:
    parser, flags = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "models":
            return _list_models(args.repository)
        if args.command == "optimize":
            return _optimize(args)
        return _serve(CliApp.run(ServerSettings, cli_args=args, cli_settings_source=flags))
    except ValidationError as exc:
        print(_invalid(exc), file=sys.stderr)
        return 2


def _optimize(args: argparse.Namespace) -> int:
    # Imported here: `serve` must not pay for (or depend on) what only `optimize` uses.
    from inscale.optimize import command as optimize_command

    options = optimize_command.Options(
        model_dir=args.model_dir,
        out=args.out,
        version=args.version,
        samples=args.samples,
        variants=None if args.variants is None else args.variants.split(","),
        max_accuracy_drop=args.max_accuracy_drop,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        install=args.install,
        server=args.server,
        token=optimize_command.token_from_env(),
    )
    try:
        report = optimize_command.run(options)
    except InscaleError as exc:
        print(f"inscale optimize: {exc.message}", file=sys.stderr)
        return 2
    print(optimize_command.table(report))
    for kind, why in {**report.skipped, **report.failed}.items():
        print(f"not made: {kind}: {why}")
    if report.installed:
        installed = report.installed
        where = " and loaded" if installed["loaded"] else ""
        print(f"installed {installed['variant']} as version {installed['version']}{where}")
    print(f"wrote {args.out}")
    return 0


def _invalid(exc: ValidationError) -> str:
    """One line per bad value, naming the flag and the variable it may have come from."""
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        doc = _DOCS_BY_KEY.get(key)
        where = key if doc is None else " / ".join(filter(None, [doc.flag, doc.env]))
        lines.append(f"inscale: invalid {where}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _serve(settings: ServerSettings) -> int:
    for name, value in environment(settings).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    _fit_open_file_limit(settings)
    with _metrics_folder(settings):
        _run_uvicorn(settings, settings.access_log)
    return 0


def _run_uvicorn(settings: ServerSettings, access_log: bool) -> None:
    uvicorn.run(
        "inscale.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # ours, set above (and again in each worker by the factory)
        log_level=settings.log_level,
        access_log=access_log,
        # X-Forwarded-For/-Proto from a proxy on this host (a sidecar) only change the client
        # address the access log prints; without it they cost every request a layer.
        proxy_headers=access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        backlog=2048,
        server_header=False,
        http=_HTTP_PROTOCOL,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # Not uvicorn's limit_concurrency: the protocol caps connections and requests itself
        # (a JSON 503 with Retry-After, and connections refused before their headers arrive).
        limit_concurrency=None,
    )


def _fit_open_file_limit(settings: ServerSettings) -> None:
    """Raise the soft open-file limit so that `--max-connections` can be reached.

    A connection past twice the cap is closed at once, so that many descriptors (plus the
    process's other files) suffice. Many systems start processes at a soft limit of 1,024
    with a far higher hard limit; Go's runtime raises it the same way. Worker processes
    inherit the raised limit.
    """
    needed = 2 * settings.max_connections + _OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit (%d) is below what --max-connections %d needs (%d): "
            "accepting may fail before the cap answers 503; raise the limit or lower the cap",
            soft,
            settings.max_connections,
            needed,
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
