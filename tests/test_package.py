"""The installed package is `inscale`, and nothing named `service` is importable from it."""

import subprocess
import sys
from pathlib import Path

import inscale


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_no_module_named_service_is_importable(tmp_path: Path) -> None:
    # From a neutral folder, as a user's program would run: the repository's own `service/`
    # source root must not leak in as a namespace package.
    result = run_python("import service", tmp_path)
    assert result.returncode != 0
    assert "No module named 'service'" in result.stderr


def test_the_package_and_its_entry_points(tmp_path: Path) -> None:
    result = run_python("import inscale, inscale.app; print(inscale.__version__)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == inscale.__version__
    module = subprocess.run(
        [sys.executable, "-m", "inscale", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert module.stdout.strip() == f"inscale {inscale.__version__}"
    script = Path(sys.executable).with_name("inscale")
    console = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert console.stdout.strip() == f"inscale {inscale.__version__}"
