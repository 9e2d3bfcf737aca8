"""A loaded model described in the protocol's words: model metadata and Triton's config JSON.

perf_analyzer and tritonclient read these before sending a request: the config's
`max_batch_size` (0 = not batchable) says whether the first metadata dim is the batch dim,
the config's dims leave that dim out, and `dynamic_batching` is present only when the
server really merges requests.
"""

from typing import Any

from inscale.models.providers import CPU
from inscale.models.version import ModelVersion
from inscale.signature import TensorSpec

PLATFORM = "onnxruntime_onnx"
# The protocol extensions the server implements (HTTP and gRPC), and only those.
# `parameters`: request and tensor parameters are read (timeout, priority,
# binary_data_output, binary_data, binary_data_size).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
)


def model_metadata(model: ModelVersion, ready_versions: list[int]) -> dict[str, Any]:
    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": spec.datatype.name, "shape": spec.dims}

    return {
        "name": model.name,
        "versions": [str(v) for v in ready_versions],
        "platform": PLATFORM,
        "inputs": [tensor(s) for s in model.signature.inputs],
        "outputs": [tensor(s) for s in model.signature.outputs],
    }


def model_config(model: ModelVersion) -> dict[str, Any]:
    batchable = model.signature.batchable
    config = model.config

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.dims
        return {
            "name": spec.name,
            "data_type": spec.datatype.config_name,
            "dims": dims[1:] if batchable else dims,
        }

    policy = config.versions
    version_policy: dict[str, Any] = (
        {"latest": {"num_versions": 1}}
        if policy == "latest"
        else {"all": {}}
        if policy == "all"
        else {"specific": {"versions": list(policy)}}
    )
    document: dict[str, Any] = {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": version_policy,
        "max_batch_size": model.max_rows if batchable else 0,
        "input": [tensor(s) for s in model.signature.inputs],
        "output": [tensor(s) for s in model.signature.outputs],
        "instance_group": [
            {
                "name": model.name,
                "kind": "KIND_CPU" if model.providers[0] == CPU else "KIND_GPU",
                "count": config.instances,
            }
        ],
        "model_transaction_policy": {"decoupled": False},
    }
    if model.batching:
        batching = config.batching
        document["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batching.max_queue_delay_ms * 1000),
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(config.timeout_ms * 1000),
                "allow_timeout_override": True,
                "max_queue_size": batching.max_queue_size,
            },
        }
    return document
