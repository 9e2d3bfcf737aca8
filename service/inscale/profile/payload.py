"""The request every trial sends: rows from the model folder's sample file when it has one
(the bundled models carry their held-out rows), else valid random rows from the signature,
encoded for `/predict` (JSON) or the Open Inference Protocol's binary tensors.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inscale.optimize.samples import find_sample_file, load_samples
from inscale.profile.load import http_request
from inscale.signature import Signature, sample_inputs

PROTOCOLS = ("predict", "v2-binary")


@dataclass(frozen=True)
class Payload:
    path: str
    body: bytes
    content_type: str
    extra_headers: dict[str, str]
    source: str  # where the rows came from, for the report

    def request(self, host: str, port: int) -> bytes:
        """The whole HTTP request, built once per server and sent again and again."""
        return http_request(host, port, self.path, self.body, self.content_type, self.extra_headers)


def build_payload(
    model_dir: Path, name: str, version: int, signature: Signature, rows: int, protocol: str
) -> Payload:
    sample_file = find_sample_file(model_dir)
    if sample_file is not None:
        samples = load_samples(sample_file, signature)
        arrays = samples.batch(0, rows)
        if len(next(iter(arrays.values()))) < rows:  # fewer rows on file than asked: repeat
            arrays = {k: np.resize(v, (rows, *v.shape[1:])) for k, v in arrays.items()}
        source = f"{rows} row(s) of {sample_file.name}"
    else:
        arrays = sample_inputs(signature, rows, np.random.default_rng(0))
        source = f"{rows} random row(s) shaped by the model's inputs"
    if protocol == "predict":
        document = {
            "model": name,
            "version": version,
            "inputs": {k: v.tolist() for k, v in arrays.items()},
        }
        body = json.dumps(document).encode()
        return Payload("/predict", body, "application/json", {}, source)
    return _v2_binary(name, version, signature, arrays, source)


def _v2_binary(
    name: str, version: int, signature: Signature, arrays: dict[str, np.ndarray], source: str
) -> Payload:
    inputs = []
    tensors = []
    for spec in signature.inputs:
        array = np.ascontiguousarray(arrays[spec.name], dtype=spec.datatype.numpy)
        raw = array.tobytes()
        inputs.append(
            {
                "name": spec.name,
                "datatype": spec.datatype.name,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        tensors.append(raw)
    header = json.dumps({"inputs": inputs}).encode()
    path = f"/v2/models/{name}/versions/{version}/infer"
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return Payload(path, header + b"".join(tensors), "application/octet-stream", headers, source)
