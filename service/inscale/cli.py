"""`inscale serve`, `inscale models [DIR]`, `inscale optimize|profile|reference MODEL_DIR`,
`inscale plan RESULTS` and `inscale --version`.

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
from inscale.model_folder import token_from_env
from inscale.models.repository import ModelRepository, ModelSource
from inscale.models.session import open_session
from inscale.optimize.variants import VARIANTS
from inscale.profile.payload import PROTOCOLS
from inscale.profile.search import STRATEGIES
from inscale.profile.space import KNOBS
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
    _add_profile(commands)
    plan = commands.add_parser(
        "plan",
        help="size a deployment (replicas, resources, autoscaler) from a profile's results",
        description="From results.json of `inscale profile`: how many replicas of which size "
        "serve --rps under --slo-p99-ms, with headroom, and the autoscaler targets that follow "
        "from the measured knee; --overlay writes them as a kustomize overlay over k8s/.",
    )
    from inscale.plan import command as plan_command  # argparse only: cheap to import

    plan_command.add_arguments(plan)
    reference = commands.add_parser(
        "reference",
        help="write a model's drift reference profile from training or validation rows",
        description="Run the rows of --data through the model and write drift_reference.json "
        "(quantile bins of every numeric input column, the predicted-class shares or bins of "
        "every output) into the model's folder, where the server reads it to monitor drift.",
    )
    # Nothing serve does not import anyway (ONNX Runtime, numpy).
    from inscale.drift import command as reference_command

    reference_command.add_arguments(reference)
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


def _add_profile(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    profile = commands.add_parser(
        "profile",
        help="measure how a model scales through the server and find its best config",
        description="Start inscale servers pinned to --cores with one config each, drive them "
        "with closed-loop load from the other cores, and search the config that serves the "
        "most under the p99 objective. Writes report.md with plots, results.json, results.csv "
        "and config.yaml to --out; running the same command again resumes an interrupted sweep.",
    )
    profile.add_argument("model_dir", type=Path, help="a model folder in a repository")
    profile.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    profile.add_argument("--version", type=int, help="default: the newest version")
    profile.add_argument(
        "--cores", help="cores the servers run on, e.g. 0 or 0-3 (default: the first one)"
    )
    profile.add_argument(
        "--load-cores", help="cores the load generator runs on (default: all the others)"
    )
    profile.add_argument(
        "--slo-p99-ms",
        type=float,
        help="the p99 objective in ms (default: the model's latency_slo_ms, else 50)",
    )
    profile.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto: the grid up to 16 configs, else Optuna's TPE (hill-climb without Optuna)",
    )
    profile.add_argument(
        "--budget-s", type=float, default=600, help="stop before passing this (default: 600)"
    )
    profile.add_argument(
        "--trial-s", type=float, default=3, help="measured seconds per level (default: 3)"
    )
    profile.add_argument(
        "--warmup-s", type=float, default=1, help="warm-up seconds per level (default: 1)"
    )
    profile.add_argument(
        "--concurrency",
        default="1,4,16,32,64",
        help="closed-loop levels each trial steps through (default: 1,4,16,32,64)",
    )
    for knob in KNOBS:
        profile.add_argument(
            "--" + knob.replace("_", "-"),
            metavar="A,B",
            help="values to search (default: a range suited to --cores)",
        )
    profile.add_argument("--protocol", choices=PROTOCOLS, default="predict")
    profile.add_argument("--rows", type=int, default=1, help="rows per request (default: 1)")
    profile.add_argument("--seed", type=int, default=0, help="Optuna's seed (default: 0)")
    profile.add_argument(
        "--confirm-rounds",
        type=int,
        default=4,
        help="at the end, measure the best config against the defaults in this many "
        "interleaved rounds (0: off; default: 4)",
    )
    profile.add_argument(
        "--apply",
        action="store_true",
        help="write the best config into the model's folder (the previous kept as a backup)",
    )
    profile.add_argument(
        "--server",
        help="with --apply: ask this server (URL) to load it; it needs --control-api open, or "
        "token with INSCALE_CONTROL_TOKEN set here too",
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
        if args.command == "profile":
            return _profile(args)
        if args.command == "plan":
            from inscale.plan import command as plan_command

            return plan_command.run(args)
        if args.command == "reference":
            from inscale.drift import command as reference_command

            return reference_command.run(args)
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
        token=token_from_env(),
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


def _profile(args: argparse.Namespace) -> int:
    from inscale.profile import command as profile_command
    from inscale.profile.space import parse_values

    try:
        options = profile_command.Options(
            model_dir=args.model_dir,
            out=args.out,
            version=args.version,
            cores=None if args.cores is None else profile_command.parse_cores(args.cores),
            load_cores=None
            if args.load_cores is None
            else profile_command.parse_cores(args.load_cores),
            slo_p99_ms=args.slo_p99_ms,
            strategy=args.strategy,
            budget_s=args.budget_s,
            trial_s=args.trial_s,
            warmup_s=args.warmup_s,
            concurrency=[int(v) for v in parse_values(args.concurrency, "concurrency")],
            space={
                knob: parse_values(getattr(args, knob), knob)
                for knob in KNOBS
                if getattr(args, knob) is not None
            },
            protocol=args.protocol,
            rows=args.rows,
            seed=args.seed,
            confirm_rounds=args.confirm_rounds,
            apply=args.apply,
            server=args.server,
            token=token_from_env(),
        )
        results = profile_command.run(options)
    except InscaleError as exc:
        print(f"inscale profile: {exc.message}", file=sys.stderr)
        return 2
    print(profile_command.summary_text(results))
    print(f"wrote {args.out}")
    return 130 if results["stopped"] == "interrupted" else 0


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
