"""The container image: the Dockerfiles lint clean, the lock files pin what pyproject.toml asks
for, and the image is built, run and stopped for real with podman (see tests/containers.py):
the CPU image, and the GPU variant, which on this GPU-less machine must fall back to CPU."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from inscale import __version__
from support.containers import (
    ROOT,
    Build,
    Container,
    build_image,
    free_port,
    podman,
    podman_problem,
    running_container,
)
from support.grpc_health import health_status, wait_serving

SAMPLE = json.loads((ROOT / "service/inscale/bundled_models/sample_input.json").read_text())
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "loadtests/Dockerfile"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The image's user (Dockerfile USER) and the settings docker-compose and k8s/ rely on.
IMAGE_USER = "10001:10001"
DOCKER_STOP_DEFAULT_S = 10


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return subprocess.run(
        [exe, "--no-color", str(path)], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hadolint_ignore_is_explained(path: Path) -> None:
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            before = lines[number - 1] if number else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"{path.name}:{number + 1}: say why {line[2:]} is ignored, in a comment above it"
            )


# --- lock files ---------------------------------------------------------------------------


def lock_pins(path: Path) -> list[tuple[Requirement, list[str]]]:
    """Each requirement of a pip lock file with its hashes (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *hashes = line.split(" --hash=")
        pins.append((Requirement(requirement), hashes))
    return pins


def pinned_versions(path: Path, python: str) -> dict[str, Version]:
    """The version a lock file installs of each package on Linux x86_64 with that Python."""
    # Marker.evaluate fills in the rest from the running interpreter.
    environment = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
    }
    versions: dict[str, Version] = {}
    for requirement, _ in lock_pins(path):
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {requirement} is not pinned"
            name = canonicalize_name(requirement.name)
            assert name not in versions, f"{path.name}: {name} pinned twice for Python {python}"
            versions[name] = Version(spec.version)
    return versions


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_lock_file_pins_every_dependency_with_hashes(variant: str) -> None:
    lock = ROOT / "constraints" / f"{variant}.txt"
    for requirement, hashes in lock_pins(lock):
        assert hashes, f"{lock.name}: {requirement.name} has no hash (--require-hashes fails)"
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    if variant == "gpu":
        # onnxruntime-gpu installs the same module as onnxruntime: never both in one environment.
        wanted = [r for r in wanted if r.name != "onnxruntime"]
        wanted += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    # Python 3.11 is the Debian bookworm base and the default image; 3.12 the CUDA Ubuntu base.
    for python in ("3.11", "3.12"):
        versions = pinned_versions(lock, python)
        for requirement in wanted:
            name = canonicalize_name(requirement.name)
            assert name in versions, f"{lock.name} does not pin {name} (Python {python})"
            assert requirement.specifier.contains(versions[name], prereleases=True), (
                f"{lock.name} pins {name}=={versions[name]}, pyproject.toml wants {requirement}"
            )
        if variant == "gpu":
            assert "onnxruntime" not in versions


def test_dockerfile_installs_the_lock_of_its_variant_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '--require-hashes -r "constraints/${VARIANT}.txt"' in dockerfile
    assert "--no-deps" in dockerfile  # nothing outside the lock gets resolved at build time
    for variant in ("cpu", "gpu"):
        assert (ROOT / "constraints" / f"{variant}.txt").is_file()
    assert (ROOT / "constraints/build.txt").is_file()


def test_build_context_holds_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied.update(w.rstrip("/") for w in words[1:-1])
    assert copied == allowed, "COPY sources and the .dockerignore allow-list differ"
    for path in copied:
        assert (ROOT / path).exists(), path


# --- the image, built and run ---------------------------------------------------------------


def image_built(variant: str) -> Build:
    reason = podman_problem()
    if reason is not None:
        pytest.skip(f"podman cannot run here: {reason}")
    return build_image(variant)


def image_config(image: str) -> dict[str, Any]:
    """The image's config, with the health check podman keeps beside it."""
    (found,) = json.loads(podman("image", "inspect", image).stdout)
    config: dict[str, Any] = {**found["Config"], "Healthcheck": found.get("Healthcheck")}
    return config


def predict_sample(container: Container) -> None:
    rows, labels = SAMPLE["inputs"], SAMPLE["labels"]
    response = httpx.post(f"{container.url}/predict", json={"inputs": rows}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["label"] == labels


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_metadata() -> None:
    config = image_config(image_built("cpu").image)
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["inscale"] and config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert {"8000/tcp", "8001/tcp"} <= config["ExposedPorts"].keys()
    assert "/health/live" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["INSCALE_HOST"] == "0.0.0.0" and env["INSCALE_PORT"] == "8000"
    assert env["INSCALE_GRPC_PORT"] == "8001"  # on by default, Triton's port
    assert env["INSCALE_PROVIDERS"] == "cpu"
    # `docker stop` sends SIGKILL after 10 s unless told otherwise: the drain must fit.
    assert float(env["INSCALE_SHUTDOWN_GRACE_S"]) < DOCKER_STOP_DEFAULT_S
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "inscale"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == "test"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["io.inscale.variant"] == "cpu"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_serves_as_non_root_on_a_read_only_root_and_stops_cleanly() -> None:
    image = image_built("cpu").image
    # The hardening docker-compose.yml applies: read-only root, /tmp in memory, no capabilities.
    hardening = [
        "--read-only",
        "--tmpfs=/tmp",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    with running_container(image, *hardening) as container:
        container.wait_ready()
        predict_sample(container)
        models = httpx.get(f"{container.url}/models", timeout=10).json()["models"]
        assert {m["name"]: m["versions"][0]["state"] for m in models} == {
            "digits": "READY",
            "digits-wide": "READY",
        }
        # The server process itself (PID 1), not only what `podman exec` would run as.
        status = container.exec("cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        assert uids is not None and uids.groups() == ("10001", "10001"), status
        assert container.exec("touch", "/opt/inscale/x").returncode != 0  # read-only root
        healthcheck = podman("healthcheck", "run", container.name, check=False)
        assert healthcheck.returncode == 0, healthcheck.stdout + healthcheck.stderr

        podman("stop", "--time=30", container.name, timeout=60)
        assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_serves_grpc_health_once_ready() -> None:
    """gRPC on (a free port: the host network is shared), as Kubernetes' gRPC probe asks it."""
    image = image_built("cpu").image
    grpc_port = free_port()
    with running_container(image, env={"INSCALE_GRPC_PORT": str(grpc_port)}) as container:
        container.wait_ready()
        target = f"127.0.0.1:{grpc_port}"
        wait_serving(target, "", timeout_s=10)  # the whole server, as /health/ready
        assert health_status(target, "digits") == "SERVING"  # one model
        assert f"gRPC server listening on 127.0.0.1:{grpc_port}" in container.logs()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_variant_installs_onnxruntime_gpu_and_falls_back_to_cpu_without_a_gpu() -> None:
    image = image_built("gpu").image
    config = image_config(image)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["INSCALE_PROVIDERS"] == "gpu"  # CUDA, then CPU
    assert config["Labels"]["io.inscale.variant"] == "gpu"
    with running_container(image) as container:
        check = (
            "import importlib.metadata as m, json, pynvml\n"
            "names = {d.metadata['Name'].lower() for d in m.distributions()}\n"
            "print(json.dumps(sorted(names & {'onnxruntime', 'onnxruntime-gpu', 'nvidia-ml-py'})))"
        )
        installed = container.exec("python", "-c", check)
        assert installed.returncode == 0, installed.stderr
        assert json.loads(installed.stdout) == ["nvidia-ml-py", "onnxruntime-gpu"]
        container.wait_ready()
        predict_sample(container)
        # No GPU here: CUDA is asked for, and the provider really in use is reported as CPU.
        digits = httpx.get(f"{container.url}/models/digits", timeout=10).json()
        assert digits["versions"][0]["providers"] == ["CPUExecutionProvider"]
