"""schemathesis drives every route of a real server from the server's own OpenAPI schema
(GET /openapi.json), the control routes with and without the bearer token: no answer is a 5xx,
every error is `{"error": "..."}`, and the bodies and headers match the schema.

The server is this module's own (`--control-api token`), so whatever the fuzzing loads or
unloads cannot disturb another test; it still checks afterwards that its models serve.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, note
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.fuzz_models import write_fuzz_repository
from support.fuzz_settings import fuzzed
from support.server import ServerProcess, running_server

TOKEN = "fuzz-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 8  # per operation and mode: 23 routes, two header sets, two generation modes
MODELS = ("mixed", "scale")
SCHEMA_CHECKS = [not_a_server_error, response_schema_conformance, response_headers_conformance]


@dataclass
class Api:
    process: ServerProcess
    schema: schemathesis.BaseSchema

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    repo = tmp_path_factory.mktemp("openapi")
    write_fuzz_repository(repo)
    env = {"INSCALE_CONTROL_TOKEN": TOKEN}
    with running_server(repo, "--control-api", "token", env=env) as process:
        document = httpx.get(f"{process.url}/openapi.json", timeout=10).json()
        yield Api(process, schemathesis.openapi.from_dict(document))
        for model in MODELS:  # the fuzzing never unloaded what the server serves
            ready = httpx.get(f"{process.url}/v2/models/{model}/ready", timeout=10)
            assert ready.status_code == 200, ready.text


def operations(api: Api) -> list[Any]:
    found = []
    for result in api.schema.get_all_operations():
        if isinstance(result, Err):  # a route schemathesis cannot read is a schema bug
            raise AssertionError(f"unreadable operation in /openapi.json: {result.err()}")
        found.append(result.ok())
    assert len(found) >= 20, [f"{o.method} {o.path}" for o in found]
    return found


def error_body(response: Any) -> None:
    """Every answer that is not a success says what went wrong in `{"error": "..."}`."""
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), content_type
        message = response.json()["error"]
        assert isinstance(message, str) and message.strip(), response.text


def fuzz_operation(
    api: Api,
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str] | None,
    checks: list[Callable[..., Any]],
    path_parameters: dict[str, str] | None = None,
) -> bool:
    """Fuzz one operation; False when no input can be made invalid (negative mode only)."""
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @fuzzed(EXAMPLES)
    @given(strategy)
    def run(case: Any) -> None:
        note(case.as_curl_command(headers=headers))  # printed for a failing example
        response = case.call(base_url=api.url, headers=headers, timeout=10)
        case.validate_response(response, checks=checks)
        error_body(response)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        return False  # e.g. a path parameter whose every invalid value is still a string
    return True


def _is_control(operation: Any) -> bool:
    return "/repository/models/" in operation.path


def _declares_input(operation: Any) -> bool:
    """Whether the schema gives the operation a body or parameters that can be violated."""
    raw = operation.definition.raw
    return "requestBody" in raw or bool(raw.get("parameters"))


@pytest.mark.parametrize(
    ("mode", "headers"),
    [
        (GenerationMode.POSITIVE, None),
        (GenerationMode.POSITIVE, AUTHORIZED),
        # Schema-violating bodies and parameters; the token changes nothing for them.
        (GenerationMode.NEGATIVE, None),
    ],
    ids=["valid-no-token", "valid-token", "invalid"],
)
def test_no_route_answers_5xx_and_answers_match_the_schema(
    api: Api, mode: GenerationMode, headers: dict[str, str] | None
) -> None:
    fuzzed_operations = []
    for operation in operations(api):
        if mode is GenerationMode.NEGATIVE and not _declares_input(operation):
            continue  # nothing to violate: every example would be filtered out
        route = f"{operation.method.upper()} {operation.path}"
        if fuzz_operation(api, operation, mode, headers, SCHEMA_CHECKS):
            fuzzed_operations.append(route)
        if "{name}" in operation.path and not _is_control(operation):
            # Random names only reach "unknown model": a served one reaches the decoders.
            for model in MODELS:
                if fuzz_operation(api, operation, mode, headers, SCHEMA_CHECKS, {"name": model}):
                    fuzzed_operations.append(f"{route} ({model})")
    assert "POST /predict" in fuzzed_operations
    assert "POST /v2/models/{name}/infer (mixed)" in fuzzed_operations


def test_control_routes_refuse_without_the_token_and_run_with_it(api: Api) -> None:
    """The gate the fuzzing above went through: 403 without the token, past it with it."""
    url = f"{api.url}/v2/repository/models/no-such-model/unload"
    refused = httpx.post(url, timeout=10)
    assert refused.status_code == 403
    assert "Authorization: Bearer" in refused.json()["error"]
    allowed = httpx.post(url, headers=AUTHORIZED, timeout=10)
    assert allowed.status_code == 404, allowed.text


def test_the_schema_documents_every_status_and_content_type_the_routes_answer(api: Api) -> None:
    checks = [status_code_conformance, content_type_conformance]
    for operation in operations(api):
        fuzz_operation(api, operation, GenerationMode.POSITIVE, AUTHORIZED, checks)
