"""The settings model is the one place a setting is written: flags, variables and README follow.

`inscale serve` builds its flags from `ServerSettings` with pydantic-settings; the precedence
tests parse with the same model configuration (`_cli_parse_args`), and one real server with two
workers proves that flags given to the parent reach the worker processes and beat the
environment there too.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic_settings import CliApp

from inscale.cli import main
from inscale.settings import ModelControl, ServerSettings, environment, setting_docs
from support.onnx_models import add_model, identity
from support.server import running_server

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INSCALE_* variable of the shell that runs the tests leaks into these."""
    for doc in setting_docs():
        monkeypatch.delenv(doc.env, raising=False)


# -- the README table ----------------------------------------------------------------------


def test_readme_table_is_the_one_generated_from_the_model() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    readme = (ROOT / "README.md").read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1
    in_readme = readme.split(START)[1].split(END)[0].lstrip("\n")
    assert in_readme == generated, (
        "README.md's settings table is out of date: run "
        "`.venv/bin/python scripts/settings_table.py --write README.md`"
    )


def test_table_shows_types_defaults_and_bounds() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split(" | ")[1].strip("`"): line for line in generated.splitlines()[2:]}
    assert rows["INSCALE_PORT"].startswith("| `--port` | `INSCALE_PORT` | integer | `8000` |")
    assert "| 0 to 65535 |" in rows["INSCALE_PORT"]
    assert "`critical`, `error`, `warning`, `info`, `debug`" in rows["INSCALE_LOG_LEVEL"]
    assert rows["INSCALE_ACCESS_LOG"].startswith("| `--access-log` / `--no-access-log` |")
    assert "| 0 to 3600 |" in rows["INSCALE_RETRY_AFTER_S"]
    assert rows["PROMETHEUS_MULTIPROC_DIR"].startswith("| (none) |")


def test_write_mode_replaces_only_the_marked_table(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{START}\n| stale |\n{END}\nafter\n")
    script = str(ROOT / "scripts" / "settings_table.py")
    subprocess.run([sys.executable, script, "--write", str(doc)], check=True)
    text = doc.read_text()
    assert text.startswith(f"before\n{START}\n| flag | variable |")
    assert text.endswith(f"|\n{END}\nafter\n") and "stale" not in text

    doc.write_text("no markers here\n")
    refused = subprocess.run(
        [sys.executable, script, "--write", str(doc)], capture_output=True, text=True
    )
    assert refused.returncode == 1 and START in refused.stderr
    assert doc.read_text() == "no markers here\n"


# -- `inscale serve --help` ----------------------------------------------------------------


def test_help_shows_every_setting_with_its_description_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for doc in setting_docs():
        if doc.flag is None:
            assert doc.env not in out  # set by the server itself, so no flag
            continue
        assert doc.flag in out
        assert f"[env: {doc.env}]" in out
        assert doc.description.replace("`", "") in out
        if doc.bounds:
            assert f"({doc.bounds}; default:" in out
    assert "--no-access-log" in out and "--no-metrics" in out
    assert "--log-level {critical,error,warning,info,debug}" in out
    assert "--model-control {all,explicit}" in out


# -- precedence: flag, then environment, then default --------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "field", "expected"),
    [
        ([], {}, "port", 8000),
        ([], {"INSCALE_PORT": "9001"}, "port", 9001),
        (["--port", "9002"], {"INSCALE_PORT": "9001"}, "port", 9002),
        (
            ["--providers", "cuda,cpu"],
            {"INSCALE_PROVIDERS": "tensorrt"},
            "providers",
            ["cuda", "cpu"],
        ),
        ([], {"INSCALE_PROVIDERS": "cuda, cpu"}, "providers", ["cuda", "cpu"]),
        (["--access-log"], {}, "access_log", True),
        (["--no-access-log"], {"INSCALE_ACCESS_LOG": "true"}, "access_log", False),
        (["--no-metrics"], {}, "metrics", False),
        (
            ["--model-control", "explicit", "--control-api", "open"],
            {},
            "model_control",
            ModelControl.EXPLICIT,
        ),
        (["--control-api", "token"], {"INSCALE_CONTROL_TOKEN": "s3"}, "control_token", "s3"),
        (["--model-repository", "/models"], {}, "model_repository", Path("/models")),
        (["--shutdown-grace-s", "2.5"], {"INSCALE_SHUTDOWN_GRACE_S": "9"}, "shutdown_grace_s", 2.5),
        # retry_after_s: 0 is a valid value (retry at once), from a flag or the environment.
        (["--retry-after-s", "0"], {"INSCALE_RETRY_AFTER_S": "7"}, "retry_after_s", 0),
        ([], {"INSCALE_RETRY_AFTER_S": "7"}, "retry_after_s", 7),
    ],
)
def test_flag_beats_environment_beats_default(
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: dict[str, str],
    field: str,
    expected: object,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = CliApp.run(ServerSettings, cli_args=flags)
    assert getattr(settings, field) == expected


def test_every_setting_round_trips_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the parent hands its workers rebuilds exactly the parent's settings."""
    changed = ServerSettings.model_validate(
        {
            "model_repository": tmp_path,
            "host": "0.0.0.0",
            "port": 9,
            "grpc_port": 9001,
            "workers": 3,
            "log_level": "debug",
            "log_format": "text",
            "model_control": ModelControl.EXPLICIT,
            "control_api": "token",
            "control_token": "s3cret",
            "control_token_file": tmp_path / "token",
            "default_model": "m",
            "providers": ["cuda", "cpu"],
            "max_body_bytes": 2048,
            "strict_readiness": True,
            "shutdown_grace_s": 2.5,
            "header_timeout_s": 0.5,
            "body_timeout_s": 120.0,
            "keep_alive_timeout_s": 75,
            "max_connections": 100,
            "max_requests_in_flight": 50,
            "access_log": True,
            "retry_after_s": 0,
            "metrics": False,
            "PROMETHEUS_MULTIPROC_DIR": tmp_path / "metrics",
        }
    )
    defaults = ServerSettings()
    unchanged = [
        name
        for name in ServerSettings.model_fields
        if getattr(changed, name) == getattr(defaults, name)
    ]
    assert unchanged == [], f"give {unchanged} a value other than the default here"

    for name, value in environment(changed).items():
        assert value is not None
        monkeypatch.setenv(name, value)
    assert ServerSettings() == changed


def test_unset_values_are_removed_from_the_environment() -> None:
    env = environment(ServerSettings())
    assert env["INSCALE_MODEL_REPOSITORY"] is None and env["INSCALE_DEFAULT_MODEL"] is None
    assert env["INSCALE_PROVIDERS"] == "cpu" and env["INSCALE_METRICS"] == "true"


# -- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            ["--port", "70000"],
            {},
            "invalid --port / INSCALE_PORT: Input should be less than or equal to 65535 (got '70000')",
        ),
        (
            ["--workers", "0"],
            {},
            "invalid --workers / INSCALE_WORKERS: Input should be greater than or equal to 1",
        ),
        (
            ["--retry-after-s", "-1"],
            {},
            "invalid --retry-after-s / INSCALE_RETRY_AFTER_S: Input should be greater than or equal to 0",
        ),
        (
            ["--max-body-bytes", "10"],
            {},
            "invalid --max-body-bytes / INSCALE_MAX_BODY_BYTES: Input should be greater than or equal to 1024",
        ),
        (
            [],
            {"INSCALE_LOG_LEVEL": "loud"},
            "invalid --log-level / INSCALE_LOG_LEVEL: Input should be 'critical', 'error', 'warning', 'info' or 'debug' (got 'loud')",
        ),
        (
            [],
            {"INSCALE_SHUTDOWN_GRACE_S": "soon"},
            "invalid --shutdown-grace-s / INSCALE_SHUTDOWN_GRACE_S: Input should be a valid number",
        ),
    ],
)
def test_a_bad_value_exits_2_naming_its_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prot", "80"], "unrecognized arguments: --prot 80"),
        (["--PROMETHEUS-MULTIPROC-DIR", "/tmp"], "unrecognized arguments"),
        (["--port"], "argument --port: expected one argument"),
    ],
)
def test_a_bad_flag_exits_2_with_usage(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: inscale") and message in err


def test_a_bad_value_stops_a_real_server_before_it_starts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inscale", "serve", "--port", "0", "--workers", "65"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid --workers / INSCALE_WORKERS: Input should be less than or equal to 64" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# -- a real server with two workers --------------------------------------------------------

_STARTED = re.compile(r"Started server process \[(\d+)\]")


def _predict_once_loaded(url: str, rows: list[list[float]]) -> httpx.Response:
    """POST /predict, waiting out a worker that is still loading its models (503, LOADING).

    Each worker loads the models itself after it starts accepting, so a request can reach
    one that is not done yet even when another answered `/health/ready`.
    """
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.post(f"{url}/predict", json={"inputs": rows}, timeout=30)
        if answer.status_code != 503 or "LOADING" not in answer.text:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"models still loading after 30 s: {answer.text}")
        time.sleep(0.05)


@pytest.mark.slow
def test_flags_reach_every_worker_and_beat_its_environment(tmp_path: Path) -> None:
    """Workers rebuild settings from the environment: the parent's flags must be in it."""
    add_model(tmp_path, "a", identity())
    add_model(tmp_path, "b", identity())
    env = {
        "INSCALE_LOG_FORMAT": "json",  # the flag below says text
        "INSCALE_DEFAULT_MODEL": "a",  # the flag below says b
        "INSCALE_MAX_BODY_BYTES": str(2**20),  # the flag below says 2048
        "INSCALE_ACCESS_LOG": "true",  # no flag: the environment beats the default (off)
    }
    flags = ["--workers", "2", "--log-format", "text", "--default-model", "b"]
    flags += ["--max-body-bytes", "2048", "--no-metrics"]
    with running_server(tmp_path, *flags, env=env) as server:
        # Ready means one worker is; on a loaded machine the second one started after all the
        # requests below (a fresh-clone run saw its startup line only after the last of them).
        deadline = time.monotonic() + 60
        while len(set(_STARTED.findall(server.log_text()))) < 2:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        for _ in range(6):  # separate connections, so both workers are likely to serve some
            answer = _predict_once_loaded(server.url, [[1.0, 2.0, 3.0, 4.0]])
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == "b"
        too_big = httpx.post(f"{server.url}/predict", content=b"x" * 4096, timeout=30)
        assert too_big.status_code == 413
        assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 404
        log = server.log_text()

    started = [line for line in log.splitlines() if _STARTED.search(line)]
    pids = {match.group(1) for match in map(_STARTED.search, started) if match}
    assert len(pids) == 2, log
    assert not any(line.lstrip().startswith("{") for line in started), "a worker logged JSON"
    assert '"POST /predict HTTP/1.1" 200' in log  # access log on, from INSCALE_ACCESS_LOG
