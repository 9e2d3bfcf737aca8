"""Podman for the deployment tests: a local base image, inscale images built once per session,
containers and pods on the host network that are always removed.

What these machines need (see shared/FACTS.md): podman as root with the runc runtime and explicit
default ulimits, set in a containers.conf named by CONTAINERS_CONF; the host's CA bundle mounted
into builds so pip inside reaches the package index; a base image made locally, because none can
be pulled (Debian bookworm from debootstrap, imported); the host network on a loopback port,
because published ports land on a bridge address.
"""

import contextlib
import fcntl
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # tests/support/ -> the project root
CACHE = ROOT / ".cache" / "containers"
BASE_TARBALL = CACHE / "debian-bookworm-python3.tar"
BASE_IMAGE = "localhost/inscale-test-base:bookworm"
# Debian's pip looks for this file; the build mounts the host's bundle over it.
CA_PATH = "/etc/ssl/certs/ca-certificates.crt"
CONTAINERS_CONF = """\
# Written by tests/containers.py: what podman needs on these machines.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


class PodmanError(RuntimeError):
    pass


def _env() -> dict[str, str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@functools.cache
def podman_problem() -> str | None:
    """Why podman cannot run here (the reason a test skips with), or None when it can."""
    reason = None
    missing = [t for t in ("podman", "buildah", "runc", "catatonit") if not shutil.which(t)]
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        missing.append("debootstrap")
    if missing:
        reason = f"not installed: {', '.join(missing)} (scripts/dev test installs them)"
    elif os.geteuid() != 0:
        reason = "podman and debootstrap run as root here; this user is not root"
    elif not Path(os.environ.get("SSL_CERT_FILE") or CA_PATH).is_file():
        reason = "no CA bundle to mount into builds (SSL_CERT_FILE or /etc/ssl/certs)"
    else:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
        if info.returncode != 0:
            reason = f"podman info failed: {info.stderr.strip()}"
    return reason


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Two test sessions at once must not debootstrap into the same folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_root(root: Path) -> None:
    """Remove a debootstrap folder, unless something is still mounted in it (proc, sys)."""
    if not root.exists():
        return
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    inside = [m for m in mounts if f" {root}/" in m or f" {root} " in m]
    if inside:
        raise PodmanError(f"{root} still has mounts, unmount them first:\n" + "\n".join(inside))
    shutil.rmtree(root)


def base_image() -> str:
    """Debian bookworm with python3 and venv as a local image (the tarball is kept in .cache)."""
    with _cache_lock():
        if not BASE_TARBALL.exists():
            root = CACHE / "debootstrap-root"
            _remove_root(root)
            debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
            cmd = [debootstrap, "--variant=minbase", "--include=python3,python3-venv"]
            result = subprocess.run(
                [*cmd, "bookworm", str(root)], capture_output=True, text=True, timeout=900
            )
            if result.returncode != 0:
                raise PodmanError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (root / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            partial = BASE_TARBALL.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
            partial.rename(BASE_TARBALL)
            _remove_root(root)
        if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            podman("import", str(BASE_TARBALL), BASE_IMAGE, timeout=300)
    return BASE_IMAGE


@dataclass(frozen=True)
class Build:
    image: str
    seconds: float
    log: str


_builds: dict[str, Build | PodmanError] = {}


def build_image(variant: str) -> Build:
    """The inscale image of a variant (cpu or gpu) on the local base, built once per session.

    podman's layer cache makes a rebuild with unchanged sources take seconds. `--format docker`
    keeps the HEALTHCHECK, which the OCI image format has no field for.
    """
    if variant not in _builds:
        image = f"localhost/inscale-test:{variant}"
        bundle = os.environ.get("SSL_CERT_FILE") or CA_PATH
        started = time.monotonic()
        try:
            result = podman(
                "build",
                "--format=docker",
                "--network=host",
                f"--volume={bundle}:{CA_PATH}:ro",
                f"--build-arg=BASE_IMAGE={base_image()}",
                f"--build-arg=VARIANT={variant}",
                "--build-arg=REVISION=test",
                f"--tag={image}",
                str(ROOT),
                timeout=1200,
            )
            _builds[variant] = Build(image, time.monotonic() - started, result.stdout)
        except PodmanError as exc:
            _builds[variant] = exc  # one failed build is enough: don't repeat it per test
    found = _builds[variant]
    if isinstance(found, PodmanError):
        raise found
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=False)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            if self.inspect("{{.State.Status}}") in ("exited", "stopped"):
                break
            time.sleep(0.2)
        raise PodmanError(f"{self.name} never became ready:\n{self.logs()}")


@contextlib.contextmanager
def running_container(
    image: str, *run_args: str, env: dict[str, str] | None = None
) -> Iterator[Container]:
    """The image's own command on the host network, bound to a free loopback port."""
    container = Container(unique_name("inscale-test"), free_port())
    settings = {
        "INSCALE_HOST": "127.0.0.1",
        "INSCALE_PORT": str(container.port),
        # The host's network: gRPC's default port would be shared by every container here.
        "INSCALE_GRPC_PORT": "0",
        **(env or {}),
    }
    args = ["run", "--detach", f"--name={container.name}", "--network=host"]
    args += [f"--env={key}={value}" for key, value in settings.items()]
    podman(*args, *run_args, image)
    try:
        yield container
    finally:
        podman("rm", "--force", "--time=5", container.name, check=False)


@contextlib.contextmanager
def kube_play(manifest: str, volumes: list[str]) -> Iterator[None]:
    """`podman kube play` a manifest; afterwards its pods and the named volumes are removed."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kube.yaml"
        path.write_text(manifest)
        try:
            podman("kube", "play", str(path), timeout=300)
            yield
        finally:
            podman("kube", "down", str(path), check=False, timeout=120)
            for volume in volumes:
                podman("volume", "rm", "--force", volume, check=False)
