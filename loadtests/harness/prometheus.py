"""Debian's `prometheus` as a plain process on a loopback port, scraping given targets."""

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from loadtests.harness.processes import ROOT, Started, free_port, spawned, wait_http_ok

CONFIG_DIR = ROOT / "monitoring" / "prometheus"  # the shipped config and rules


def config(targets: Sequence[str], interval_s: float = 1) -> str:
    """The shipped prometheus.yml with its rules, scraping `targets` every `interval_s`."""
    loaded = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
    loaded["global"].update(
        scrape_interval=f"{interval_s:g}s", evaluation_interval=f"{interval_s:g}s"
    )
    loaded["rule_files"] = [str(p) for p in sorted((CONFIG_DIR / "rules").glob("*.yml"))]
    loaded["scrape_configs"][0]["static_configs"] = [{"targets": list(targets)}]
    return str(yaml.safe_dump(loaded))


@contextmanager
def prometheus(workdir: Path, targets: Sequence[str], interval_s: float = 1) -> Iterator[Started]:
    """Ready (`/-/ready`) when this yields; its first scrape can take a few seconds more."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is missing: apt-get install prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config(targets, interval_s))
    port = free_port()
    cmd = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with spawned(cmd, workdir / "prometheus.log", grace_s=10) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/-/ready", 60, proc)
        yield Started(url, proc.pid, workdir / "prometheus.log")
