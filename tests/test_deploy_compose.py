"""docker-compose.yml: docker-compose accepts it, every file it builds from or mounts exists,
every port is bound to 127.0.0.1, and its services point at each other: Prometheus at the
server with the monitoring rules, Grafana at Prometheus and the dashboards, Locust at the server
with the load-test scenarios. Files are checked as the containers will see them: each service's
mounts are copied into a folder laid out like the container's filesystem."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.containers import ROOT
from support.server import ServerProcess

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SERVER_PORT = 8000  # the image's INSCALE_PORT
GRPC_PORT = 8001  # the image's INSCALE_GRPC_PORT


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target))
    return mounts


def container_files(service: dict[str, Any], into: Path) -> Path:
    """The service's mounts copied to `into`, laid out as the container sees them."""
    for source, target in bind_mounts(service):
        destination = into / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy(source, destination)
    return into


def test_docker_compose_accepts_the_file_with_and_without_the_load_profile() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (scripts/dev test installs it)")
    for profile in ([], ["--profile", "load"]):
        result = subprocess.run(
            [exe, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_every_file_the_stack_builds_from_or_mounts_exists() -> None:
    named_volumes = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert context.is_dir(), name
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named_volumes, f"{name}: volume {source} is not declared"


def test_every_port_is_bound_to_localhost() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    assert SERVICES["inscale"]["ports"] == [
        f"127.0.0.1:{SERVER_PORT}:{SERVER_PORT}",
        f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}",
    ]
    # The ports the image listens on by default, so publishing them needs no setting.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"INSCALE_PORT={SERVER_PORT}" in dockerfile
    assert f"INSCALE_GRPC_PORT={GRPC_PORT}" in dockerfile
    assert "INSCALE_GRPC_PORT" not in SERVICES["inscale"]["environment"]


def test_prometheus_runs_the_monitoring_config_aimed_at_the_compose_service(
    tmp_path: Path,
) -> None:
    service = SERVICES["prometheus"]
    root = container_files(service, tmp_path)
    (config_flag,) = [f for f in service["command"] if f.startswith("--config.file=")]
    config_path = root / config_flag.split("=", 1)[1].lstrip("/")
    config = yaml.safe_load(config_path.read_text())
    reference = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"inscale:{SERVER_PORT}"]}]
    # Only the target differs from monitoring/prometheus/prometheus.yml.
    for scrape in reference["scrape_configs"]:
        scrape["static_configs"] = job["static_configs"]
    assert config == reference
    # The rule files resolve, relative to the config file, inside the container.
    for pattern in config["rule_files"]:
        assert sorted(config_path.parent.glob(pattern)), f"{pattern} matches no rule file"
    promtool = shutil.which("promtool")
    if promtool is not None:  # Debian's prometheus, which the monitoring tests install
        result = subprocess.run(
            [promtool, "check", "config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_reads_prometheus_and_provisions_the_dashboards(tmp_path: Path) -> None:
    service = SERVICES["grafana"]
    root = container_files(service, tmp_path)
    provisioning = root / "etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"  # the service name and its port
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    for provider_file in (provisioning / "dashboards").glob("*.yml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            dashboards = root / provider["options"]["path"].lstrip("/")
            assert sorted(dashboards.glob("*.json")), f"no dashboard at {provider['options']}"
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (root / home.lstrip("/")).is_file()


def test_locust_runs_the_scenarios_against_the_server(tmp_path: Path) -> None:
    master, worker = SERVICES["locust-master"], SERVICES["locust-worker"]
    assert master["profiles"] == worker["profiles"] == ["load"]
    assert master["environment"]["LOCUST_HOST"] == f"http://inscale:{SERVER_PORT}"
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"
    for service in (master, worker):
        root = container_files(service, tmp_path / service["command"][0].strip("-"))
        locustfile = root / service["environment"]["LOCUST_LOCUSTFILE"].lstrip("/")
        assert locustfile.is_file()
        # Importing the locustfile from the mounted layout reads its sample rows: the mounts
        # are all it needs.
        result = subprocess.run(
            [sys.executable, "-c", f"import runpy; runpy.run_path({str(locustfile)!r})"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_server_service_is_hardened_drains_and_checks_a_served_path(
    bundled_server: ServerProcess,
) -> None:
    service = SERVICES["inscale"]
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
    assert service["cap_drop"] == ["ALL"]
    grace = float(service["environment"]["INSCALE_SHUTDOWN_GRACE_S"])
    assert float(service["stop_grace_period"].removesuffix("s")) > grace
    check = " ".join(service["healthcheck"]["test"])
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", check)
    assert found is not None, check
    assert int(found.group(1)) == SERVER_PORT
    response = httpx.get(f"{bundled_server.url}{found.group(2)}", timeout=10)
    assert response.status_code == 200, response.text
