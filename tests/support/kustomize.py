"""`kubectl kustomize` of a folder, as the parsed documents it renders; None without kubectl."""

import shutil
import subprocess
from pathlib import Path
from typing import Any


def kustomize(folder: Path) -> list[dict[str, Any]] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    import yaml

    # The overlays name files one folder up (k8s/), which the default load restrictor refuses.
    result = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
