"""Models on disk: version folders and policies, config files, model names, `inscale models`."""

import subprocess
import sys
from pathlib import Path

import pytest

from inscale.cli import main
from inscale.errors import ConfigError, InvalidInput, ModelNotFound
from inscale.models.config import ModelConfig, load_model_config
from inscale.models.repository import ModelRepository, check_model_name
from support.onnx_models import add_model, identity


def model_folder(
    repo: Path, name: str, versions: list[int], config: dict[str, object] | None = None
) -> Path:
    """`repo/name/<v>/model.onnx` for each version, with a config.yaml when `config` is given."""
    for version in versions:
        add_model(repo, name, identity(), version=version, config=config)
    return repo / name


# -- versions ------------------------------------------------------------------------------


def test_latest_is_the_highest_numbered_folder_holding_a_model(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1, 2, 10])
    (model / "11").mkdir()  # higher, but holds no model.onnx
    (model / "12").mkdir()
    (model / "12" / "weights.bin").write_bytes(b"not a model")
    source = ModelRepository(tmp_path).describe("m")
    assert source.versions == (10,)  # numerically highest, not "2" as text would sort
    assert source.problems == ()
    assert source.model_path(10) == model / "10" / "model.onnx"


def test_versions_all_selects_every_folder_with_a_model(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [3, 1, 2], {"versions": "all"})
    (model / "4").mkdir()
    source = ModelRepository(tmp_path).describe("m")
    assert source.versions == (1, 2, 3)
    assert source.problems == ()


def test_listed_versions_select_those_present_and_report_the_missing(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1, 2], {"versions": [1, 3]})
    (model / "3").mkdir()  # a folder without model.onnx is not a version
    source = ModelRepository(tmp_path).describe("m")
    assert source.versions == (1,)
    assert source.problems == ("listed versions not found: 3",)


def test_folders_that_are_not_numbered_versions_are_ignored(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1], {"versions": "all"})
    onnx_bytes = (model / "1" / "model.onnx").read_bytes()
    for name in ["v2", "latest", "-3", "2.0"]:
        (model / name).mkdir()
        (model / name / "model.onnx").write_bytes(onnx_bytes)
    (model / "5").write_text("a file, not a folder")
    assert ModelRepository(tmp_path).describe("m").versions == (1,)


def test_model_without_any_version_folder_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "model.onnx").write_bytes(b"at the wrong level")
    source = ModelRepository(tmp_path).describe("m")
    assert source.versions == ()
    assert source.problems == ("no version folder with model.onnx (expected m/1/model.onnx)",)


# -- the repository folder -----------------------------------------------------------------


def test_names_are_the_plain_model_folders_sorted(tmp_path: Path) -> None:
    for name in ["b", "a", "digits-wide"]:
        model_folder(tmp_path, name, [1])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("a file is not a model")
    repository = ModelRepository(tmp_path)
    assert repository.names() == ["a", "b", "digits-wide"]
    assert [repository.describe(n).name for n in repository.names()] == ["a", "b", "digits-wide"]


def test_missing_repository_folder_has_no_models(tmp_path: Path) -> None:
    assert ModelRepository(tmp_path / "absent").names() == []


def test_describe_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"model 'nope' is not in the repository"):
        ModelRepository(tmp_path).describe("nope")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "..", ".", "a\\b", "x/../y"])
def test_check_model_name_refuses_paths_and_hidden_names(name: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_model_name(name)
    assert (
        raised.value.message
        == f"'{name}' is not a valid model name (a plain folder name is needed)"
    )


@pytest.mark.parametrize("name", ["digits-wide", "digits", "model_1", "v1.2", "7"])
def test_check_model_name_accepts_plain_names(name: str) -> None:
    check_model_name(name)


def test_describe_refuses_a_path_before_touching_the_disk(tmp_path: Path) -> None:
    model_folder(tmp_path / "repo", "m", [1])
    model_folder(tmp_path, "outside", [1])  # a real model folder next to the repository
    with pytest.raises(InvalidInput, match=r"'\.\./outside' is not a valid model name"):
        ModelRepository(tmp_path / "repo").describe("../outside")


# -- config files --------------------------------------------------------------------------


def test_no_config_file_means_defaults(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1])
    assert load_model_config(model) == ModelConfig()
    source = ModelRepository(tmp_path).describe("m")
    assert source.config == ModelConfig() and source.config_file is None


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        (
            "config.yaml",
            "versions: all\ntimeout_ms: 250\nbatching:\n  max_batch_size: 8\n"
            "  preferred_batch_sizes: [4, 2, 4]\n",
        ),
        (
            "config.yml",
            "versions: all\ntimeout_ms: 250\nbatching: {max_batch_size: 8, "
            "preferred_batch_sizes: [4, 2, 4]}\n",
        ),
        (
            "config.toml",
            'versions = "all"\ntimeout_ms = 250\n\n[batching]\nmax_batch_size = 8\n'
            "preferred_batch_sizes = [4, 2, 4]\n",
        ),
    ],
)
def test_yaml_and_toml_configs_parse_the_same(tmp_path: Path, filename: str, text: str) -> None:
    model = model_folder(tmp_path, "m", [1, 2])
    (model / filename).write_text(text)
    config = load_model_config(model)
    assert config.versions == "all"
    assert config.timeout_ms == 250
    assert config.batching.max_batch_size == 8
    assert config.batching.preferred_batch_sizes == [2, 4]  # sorted, duplicates dropped
    assert config.batching.enabled is True  # unset fields keep their defaults
    source = ModelRepository(tmp_path).describe("m")
    assert source.config == config
    assert source.config_file == model / filename
    assert source.versions == (1, 2)


def test_toml_version_list_selects_versions(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1, 2, 3])
    (model / "config.toml").write_text("versions = [3, 1]\n")
    assert ModelRepository(tmp_path).describe("m").versions == (1, 3)


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1])
    (model / "config.yaml").write_text("# nothing set yet\n")
    assert load_model_config(model) == ModelConfig()


def test_two_config_files_are_an_error_naming_both(tmp_path: Path) -> None:
    model = model_folder(tmp_path, "m", [1], {"timeout_ms": 5})
    (model / "config.toml").write_text("timeout_ms = 6\n")
    expected = "model 'm' has several config files (config.yaml, config.toml); keep one"
    with pytest.raises(ConfigError) as raised:
        load_model_config(model)
    assert raised.value.message == expected
    source = ModelRepository(tmp_path).describe("m")
    assert source.config is None and source.config_file is None
    assert source.problems == (expected,)
    assert source.versions == (1,)  # what would load, had the config been valid


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "batching:\n  max_batch_sise: 8\n",
            "batching.max_batch_sise: Extra inputs are not permitted",
        ),
        ("max_batch_size: 8\n", "max_batch_size: Extra inputs are not permitted"),
        ("runtime:\n  threads: 2\n", "runtime.threads: Extra inputs are not permitted"),
        ("padding:\n  tokens: {axis: 1, pad: 0}\n", "padding.tokens.pad: Extra inputs"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path, text: str, where: str) -> None:
    model = model_folder(tmp_path, "m", [1])
    (model / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_model_config(model)
    assert raised.value.message.startswith(f"{model / 'config.yaml'}: ")
    assert where in raised.value.message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("batching:\n  max_batch_size: 0\n", "batching.max_batch_size"),
        ("batching:\n  max_batch_size: lots\n", "batching.max_batch_size"),
        ("batching:\n  preferred_batch_sizes: [4, 0]\n", "batching.preferred_batch_sizes"),
        ("timeout_ms: 0\n", "timeout_ms"),
        ("instances: 65\n", "instances"),
        ("padding:\n  tokens: {axis: 0}\n", "padding.tokens.axis"),
        ("runtime:\n  execution_mode: fastest\n", "runtime.execution_mode"),
        ("versions: newest\n", "versions"),
    ],
)
def test_invalid_values_are_errors_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    model = model_folder(tmp_path, "m", [1])
    (model / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_model_config(model)
    assert f"{model / 'config.yaml'}: {field}" in raised.value.message


@pytest.mark.parametrize(
    ("filename", "text", "problem"),
    [
        ("config.yaml", "batching: [unclosed\n", "cannot be read"),
        ("config.toml", "batching = \n", "cannot be read"),
        ("config.yaml", "- a list\n- not a mapping\n", "expected a mapping at the top level"),
    ],
)
def test_unreadable_config_is_an_error_naming_the_file(
    tmp_path: Path, filename: str, text: str, problem: str
) -> None:
    model = model_folder(tmp_path, "m", [1])
    (model / filename).write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_model_config(model)
    assert raised.value.message.startswith(f"{model / filename}: {problem}")


def test_invalid_config_is_a_problem_of_the_model_not_the_repository(tmp_path: Path) -> None:
    model_folder(tmp_path, "good", [1])
    bad = model_folder(tmp_path, "bad", [1])
    (bad / "config.yaml").write_text("batching:\n  max_batch_sise: 8\n")
    repo = ModelRepository(tmp_path)
    sources = {n: repo.describe(n) for n in repo.names()}
    assert sources["good"].problems == () and sources["good"].versions == (1,)
    assert sources["bad"].config is None
    [problem] = sources["bad"].problems
    assert "batching.max_batch_sise" in problem


# -- `inscale models DIR` ------------------------------------------------------------------


def test_cli_models_lists_each_model_ok_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_folder(tmp_path, "plain", [1])
    model_folder(tmp_path, "configured", [1, 2], {"versions": "all"})
    assert main(["models", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"repository: {tmp_path}",
        "  configured: versions 1, 2; config.yaml; ok",
        "  plain: versions 1; no config (defaults); ok",
    ]


def test_cli_models_says_why_a_model_cannot_load_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_folder(tmp_path, "good", [1])
    misspelt = model_folder(tmp_path, "misspelt", [1])
    (misspelt / "config.yaml").write_text("batching:\n  max_batch_sise: 8\n")
    (tmp_path / "empty").mkdir()
    model_folder(tmp_path, "partial", [1], {"versions": [1, 3]})
    assert main(["models", str(tmp_path)]) == 1
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["good"].endswith("; ok")
    assert "cannot load: " in lines["misspelt"] and "max_batch_sise" in lines["misspelt"]
    assert lines["empty"].endswith(
        "cannot load: no version folder with model.onnx (expected empty/1/model.onnx)"
    )
    assert lines["partial"] == (
        "  partial: versions 1; config.yaml; cannot load: listed versions not found: 3"
    )


def test_cli_models_on_an_empty_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"repository: {tmp_path}",
        "  (no model folders)",
    ]


def test_cli_models_on_a_missing_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", str(tmp_path / "absent")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"inscale: {tmp_path / 'absent'} is not a folder\n"
    assert captured.out == ""


def test_python_m_service_models_exits_1_when_a_model_cannot_load(tmp_path: Path) -> None:
    """The real entry point turns `main`'s result into the process's exit status."""
    model_folder(tmp_path, "good", [1])
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "inscale", "models", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "  good: versions 1; no config (defaults); ok" in done.stdout.splitlines()
    assert (
        "  empty: versions none; no config (defaults); cannot load: no version folder"
        in done.stdout
    )


def test_models_command_opens_each_version_so_a_corrupt_file_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(b"not a protobuf")
    assert main(["models", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "corrupt: versions 1; no config (defaults); cannot load: version 1:" in out
    assert "INVALID_PROTOBUF" in out
