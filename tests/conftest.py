from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.onnx_models import (
    add_model,
    busy,
    fixed_batch,
    identity,
    two_in_two_out,
    variable_length,
)
from support.server import ServerProcess, running_server

ONE_THREAD = {"runtime": {"intra_op_threads": 1}}


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of small models built with onnx.helper, shared by the e2e tests."""
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "identity", identity())
    add_model(repo, "pair", two_in_two_out())
    add_model(
        repo,
        "varlen",
        variable_length(),
        config={"padding": {"tokens": {"axis": 1, "value": 0}}},
    )
    add_model(repo, "fixed", fixed_batch())
    add_model(repo, "nobatch", identity(), config={"batching": {"enabled": False}})
    add_model(
        repo,
        "busy",
        busy(),
        config={
            **ONE_THREAD,
            # Its run time is chosen per request (`work`), so the learned cost says nothing:
            # these tests see the queue's own rules (full, deadline), without admission.
            "batching": {
                "max_batch_size": 8,
                "max_queue_delay_ms": 5,
                "max_queue_size": 3,
                "admission": False,
            },
            "timeout_ms": 60_000,
        },
    )
    add_model(repo, "patient", identity(), config={"batching": {"max_queue_delay_ms": 5000}})
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    bad_config = repo / "badconfig"
    add_model(repo, "badconfig", identity())
    (bad_config / "config.yaml").write_text("batching:\n  max_batch_sise: 8\n")
    return repo


@pytest.fixture(scope="session")
def server(test_repo: Path) -> Iterator[ServerProcess]:
    """One server on the test repository for tests that do not disturb each other.

    Its Retry-After is not the default (1), so the 503 tests show the setting is read.
    """
    with running_server(test_repo, "--retry-after-s", "7") as proc:
        yield proc


@pytest.fixture(scope="session")
def bundled_server() -> Iterator[ServerProcess]:
    """The server as a user starts it: no arguments, so the bundled models. One for the whole
    session: its users only read (predict, probes, /metrics), so they cannot disturb each other."""
    with running_server(None) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
