"""Bad requests to `POST /predict` against a real server.

Each one gets the right status, a JSON body `{"error": "..."}` whose message names what was
wrong, and an `x-request-id` header; none of them stops the server serving good requests.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.server import ServerProcess, running_server

ROW = [1.0, 2.0, 3.0, 4.0]
VALID = {"model": "identity", "inputs": [ROW]}
BODY_LIMIT = 2048


def as_json(document: object) -> bytes:
    return json.dumps(document).encode()


def identity_with(**fields: object) -> bytes:
    """A valid request for `identity` with some fields replaced or added."""
    return as_json({**VALID, **fields})


def pair_with(inputs: object) -> bytes:
    return as_json({"model": "pair", "inputs": inputs})


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The response is `status` with a JSON `{"error": message}` holding every one of `words`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id"), "every response carries a request id"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def assert_serves(client: httpx.Client) -> None:
    """A valid request still gets the right answer and the server says it is live."""
    response = client.post("/predict", json=VALID)
    assert response.status_code == 200, response.text
    assert response.json() == {"model": "identity", "version": 1, "outputs": {"y": [ROW]}}
    live = client.get("/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """One client for the module (conftest's is per test, and a client is slow to build)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(autouse=True)
def _server_still_serves(client: httpx.Client) -> Iterator[None]:
    yield
    assert_serves(client)


def post(client: httpx.Client, content: bytes, **headers: str) -> httpx.Response:
    return client.post(
        "/predict", content=content, headers={"content-type": "application/json", **headers}
    )


# -- the request document ------------------------------------------------------------------

_POSITIVE_VERSION = '"version" must be a positive integer'
_POSITIVE_TIMEOUT = '"timeout_ms" must be a positive number'
_INPUTS_KIND = '"inputs" must be an array or an object mapping input names to arrays'


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(b'{"model": "identity", "inputs": [[1, 2', ["not valid JSON"], id="malformed"),
        pytest.param(b'{"inputs": [[NaN, 1, 2, 3]]}', ["not valid JSON"], id="nan-literal"),
        pytest.param(b"", ["the request body is empty", "JSON object"], id="empty"),
        pytest.param(as_json([ROW]), ["JSON object", '"inputs"'], id="array-not-object"),
        pytest.param(as_json("inputs"), ["JSON object"], id="string-not-object"),
        pytest.param(
            identity_with(extra=1),
            ["unknown field 'extra'", "inputs, model, priority, timeout_ms, version"],
            id="unknown-field",
        ),
        pytest.param(as_json({"model": "identity"}), ['missing field "inputs"'], id="no-inputs"),
        pytest.param(identity_with(model=3), ['"model" must be a string'], id="model-int"),
        pytest.param(
            identity_with(model=["identity"]), ['"model" must be a string'], id="model-list"
        ),
        pytest.param(identity_with(version="abc"), [_POSITIVE_VERSION], id="version-abc"),
        pytest.param(identity_with(version=True), [_POSITIVE_VERSION], id="version-true"),
        pytest.param(identity_with(version=1.5), [_POSITIVE_VERSION], id="version-float"),
        pytest.param(
            identity_with(version=-1),
            [_POSITIVE_VERSION],
            id="version-negative",
        ),
        pytest.param(identity_with(timeout_ms=0), [_POSITIVE_TIMEOUT], id="timeout-zero"),
        pytest.param(identity_with(timeout_ms=-5), [_POSITIVE_TIMEOUT], id="timeout-negative"),
        pytest.param(identity_with(timeout_ms="x"), [_POSITIVE_TIMEOUT], id="timeout-string"),
        pytest.param(identity_with(timeout_ms=True), [_POSITIVE_TIMEOUT], id="timeout-true"),
        pytest.param(identity_with(inputs=5), [_INPUTS_KIND], id="inputs-number"),
        pytest.param(identity_with(inputs=None), [_INPUTS_KIND], id="inputs-null"),
        pytest.param(identity_with(inputs="1,2,3,4"), [_INPUTS_KIND], id="inputs-string"),
    ],
)
def test_bad_request_document_is_400(
    client: httpx.Client, content: bytes, words: list[str]
) -> None:
    assert_error(post(client, content), 400, *words)


# -- inputs against the model's signature --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(
            pair_with({"x": [[1, 2, 3]], "idx": [[0.5, 1.0]]}),
            ["input 'idx'", "expected integers, got numbers"],
            id="floats-for-int64",
        ),
        pytest.param(
            pair_with({"x": [[1, 2, 3]], "idx": [["0", "1"]]}),
            ["input 'idx'", "expected integers, got strings"],
            id="strings-for-int64",
        ),
        pytest.param(
            pair_with({"x": [[1, 2, 3]], "idx": [[True, False]]}),
            ["input 'idx'", "expected integers, got booleans"],
            id="booleans-for-int64",
        ),
        pytest.param(
            pair_with({"x": [["1", "2", "3"]], "idx": [[0, 1]]}),
            ["input 'x'", "expected numbers, got strings"],
            id="strings-for-float",
        ),
        pytest.param(
            identity_with(inputs=[[True, False, True, False]]),
            ["input 'x'", "expected numbers, got booleans"],
            id="booleans-for-float",
        ),
        pytest.param(
            identity_with(inputs=[[1, 2, None, 4]]),
            ["input 'x'", "expected numbers", "null"],
            id="null-for-float",
        ),
        pytest.param(
            pair_with({"x": [[1, 2, 3], [4, 5, 6]], "idx": [[0, 1], [0]]}),
            ["input 'idx'", "rows differ in length"],
            id="ragged-rows",
        ),
        pytest.param(
            identity_with(inputs=ROW),
            ["input 'x'", "expected shape [-1, 4] (rank 2)", "got [4] (rank 1)"],
            id="rank-1-for-rank-2",
        ),
        pytest.param(
            identity_with(inputs=[[ROW]]),
            ["input 'x'", "expected shape [-1, 4] (rank 2)", "got [1, 1, 4] (rank 3)"],
            id="rank-3-for-rank-2",
        ),
        pytest.param(
            identity_with(inputs=[[*ROW, 5.0]] * 2),
            ["input 'x'", "expected shape [-1, 4]", "got [2, 5]", "axis 1 must be 4"],
            id="wrong-dim",
        ),
        pytest.param(
            as_json({"model": "fixed", "inputs": [[1, 2, 3]]}),
            ["input 'x'", "expected shape [2, 3]", "got [1, 3]", "axis 0 must be 2"],
            id="fixed-batch-wrong-rows",
        ),
        pytest.param(pair_with({"x": [[1, 2, 3]]}), ["missing input 'idx'"], id="missing-input"),
        pytest.param(
            identity_with(inputs={"z": [ROW]}),
            ["unknown input 'z'", "the model's inputs are: x"],
            id="unknown-input",
        ),
        pytest.param(
            pair_with({"x": [[1, 2, 3]], "idx": [[0, 1]], "w": [[1]]}),
            ["unknown input 'w'", "the model's inputs are: x, idx"],
            id="extra-input",
        ),
        pytest.param(
            pair_with([[1, 2, 3]]),
            ["several inputs (x, idx)", '"inputs" as an object'],
            id="bare-array-for-several-inputs",
        ),
        pytest.param(
            pair_with({"x": [[1, 2, 3]] * 2, "idx": [[0, 1]] * 3}),
            ["input 'idx'", "has 3 rows", "other inputs have 2"],
            id="row-counts-differ",
        ),
        pytest.param(
            identity_with(inputs=[]),
            ["no rows"],
            id="zero-rows",
        ),
        pytest.param(
            identity_with(inputs=[ROW] * 4097),
            [
                "the request has 4097 rows; this model takes at most 4096 per request",
                "max_request_rows",
            ],
            id="too-many-rows",
        ),
    ],
)
def test_inputs_not_matching_the_signature_are_400(
    client: httpx.Client, content: bytes, words: list[str]
) -> None:
    assert_error(post(client, content), 400, *words)


def test_max_request_rows_are_accepted(client: httpx.Client) -> None:
    """The bound of the too-many-rows case is inclusive: 4,096 rows run (in runs of 32)."""
    response = post(client, identity_with(inputs=[ROW] * 4096))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["y"] == [ROW] * 4096


# -- which model ---------------------------------------------------------------------------


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = post(client, identity_with(model="nope"))
    assert_error(response, 404)
    assert response.json() == {"error": "unknown model 'nope'"}


def test_model_name_with_a_path_is_an_unknown_model(client: httpx.Client) -> None:
    response = post(client, identity_with(model="../identity"))
    assert_error(response, 404)
    assert response.json() == {"error": "unknown model '../identity'"}


def test_unknown_version_is_404(client: httpx.Client) -> None:
    response = post(client, identity_with(version=9))
    assert_error(response, 404)
    assert response.json() == {"error": "model 'identity' has no version 9"}


def test_model_left_out_with_several_served_names_them(
    client: httpx.Client, test_repo: Path
) -> None:
    response = post(client, as_json({"inputs": [ROW]}))
    message = assert_error(response, 400, "several models are served", 'name one in "model"')
    for name in sorted(p.name for p in test_repo.iterdir()):
        assert name in message


# -- models that failed to load ------------------------------------------------------------


@pytest.mark.parametrize("model", ["broken", "badconfig"])
def test_model_that_failed_to_load_is_503_unavailable(client: httpx.Client, model: str) -> None:
    assert_error(post(client, identity_with(model=model)), 503, f"model '{model}'", "UNAVAILABLE")


def test_failed_version_named_explicitly_says_why(client: httpx.Client) -> None:
    assert_error(
        post(client, identity_with(model="broken", version=1)),
        503,
        "model 'broken' version 1 is UNAVAILABLE",
        "model.onnx",
        "cannot load",
    )


@pytest.mark.parametrize(
    ("model", "why"), [("broken", "cannot load"), ("badconfig", "max_batch_sise")]
)
def test_model_that_failed_to_load_says_why(client: httpx.Client, model: str, why: str) -> None:
    assert_error(post(client, identity_with(model=model)), 503, "UNAVAILABLE", why)


def test_models_that_fail_to_load_do_not_stop_the_others(client: httpx.Client) -> None:
    response = client.get("/models")
    assert response.status_code == 200, response.text
    models = {m["name"]: m["versions"] for m in response.json()["models"]}
    for name in ["identity", "pair", "varlen", "fixed", "nobatch", "busy"]:
        assert [v["state"] for v in models[name]] == ["READY"], (name, models[name])
    for name, why in [("broken", "cannot load"), ("badconfig", "max_batch_sise")]:
        [version] = models[name]
        assert version["state"] == "UNAVAILABLE"
        assert why in version["reason"], version
    assert "model.onnx" in models["broken"][0]["reason"]
    assert "config.yaml" in models["badconfig"][0]["reason"]


# -- routes and headers --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_route_is_404_json(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/nope")
    assert_error(response, 404)
    assert response.json() == {"error": f"no route {method} /nope"}


def test_wrong_method_is_405_json(client: httpx.Client) -> None:
    response = client.get("/predict")
    assert_error(response, 405)
    assert response.json() == {"error": "method GET is not allowed on /predict (allowed: POST)"}
    assert response.headers["allow"] == "POST"


def test_error_response_echoes_the_clients_request_id(client: httpx.Client) -> None:
    response = post(client, b"{", **{"x-request-id": "bad-input-42"})
    assert_error(response, 400, "not valid JSON")
    assert response.headers["x-request-id"] == "bad-input-42"


# -- body size limit -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(test_repo: Path) -> Iterator[httpx.Client]:
    """A client of a second server on the same repository, with a 2 KiB body limit."""
    env = {"INSCALE_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with running_server(test_repo, env=env) as proc, httpx.Client(base_url=proc.url) as c:
        yield c


def padded(size: int) -> bytes:
    """A valid identity request of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = as_json(VALID)
    assert len(body) <= size
    return body + b" " * (size - len(body))


def chunks(body: bytes, size: int = 256) -> Iterator[bytes]:
    """As an iterator, httpx sends the body chunked: no Content-Length for the server."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_body_over_the_limit_with_content_length_is_413(limited: httpx.Client) -> None:
    response = limited.post("/predict", content=padded(BODY_LIMIT + 1))
    assert_error(response, 413)
    assert response.json() == {
        "error": f"request body of {BODY_LIMIT + 1} bytes exceeds the limit of {BODY_LIMIT}"
    }
    huge = limited.post("/predict", content=b"x" * 4_000_000)
    assert_error(huge, 413, "4000000 bytes", f"limit of {BODY_LIMIT}")
    assert_serves(limited)


def test_chunked_body_over_the_limit_is_413(limited: httpx.Client) -> None:
    response = limited.post("/predict", content=chunks(padded(BODY_LIMIT + 1)))
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413)
    assert response.json() == {"error": f"request body exceeds the limit of {BODY_LIMIT} bytes"}
    endless = limited.post("/predict", content=(b"x" * 10_000 for _ in range(400)))
    assert_error(endless, 413, f"limit of {BODY_LIMIT} bytes")
    assert_serves(limited)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_at_the_limit_is_served(limited: httpx.Client, chunked: bool) -> None:
    body = padded(BODY_LIMIT)
    response = limited.post("/predict", content=chunks(body) if chunked else body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == {"y": [ROW]}


# -- many bad requests ---------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def bad_bodies() -> list[tuple[bytes, int]]:
    """Bad requests (body, expected status), small and about 0.65 MB in turn: 200 of them send
    65 MB of bodies (several times that once parsed), so a server that kept them would
    break the bound below."""
    many_wide = [[*ROW, 5.0]] * 25_000
    small: list[tuple[bytes, int]] = [
        (b"{", 400),
        (b"", 400),
        (as_json([ROW]), 400),
        (identity_with(extra=1), 400),
        (identity_with(model="nope"), 404),
        (identity_with(version=9), 404),
        (identity_with(timeout_ms="x"), 400),
        (pair_with({"x": [[1, 2, 3]], "idx": [[0.5, 1.0]]}), 400),
        (pair_with({"x": [[1, 2, 3]] * 2, "idx": [[0, 1]] * 3}), 400),
        (identity_with(inputs=[ROW] * 4097), 400),
        (identity_with(model="broken"), 503),
    ]
    # Every large body is read and parsed whole; most then fail before any array is built.
    large: list[tuple[bytes, int]] = [
        (identity_with(inputs=many_wide), 400),  # wrong dim, after conversion to an array
        (identity_with(inputs=many_wide)[:-3], 400),  # truncated JSON
        (identity_with(inputs=many_wide, extra=1), 400),  # unknown field
        (identity_with(inputs=many_wide, model="nope"), 404),
        (identity_with(inputs=many_wide, version="abc"), 400),
    ]
    return [pair for i in range(len(small)) for pair in (small[i], large[i % len(large)])]


def test_memory_stays_bounded_under_bad_requests(
    client: httpx.Client, server: ServerProcess
) -> None:
    assert server.proc is not None
    bodies = bad_bodies()
    for body, status in bodies:  # warm up: first-use allocations are not growth
        assert_error(post(client, body), status)
    before = rss_bytes(server.proc.pid)
    for i in range(200):
        body, status = bodies[i % len(bodies)]
        assert_error(post(client, body), status)
    growth = rss_bytes(server.proc.pid) - before
    assert growth < 50 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert_serves(client)
