"""The protocol's generated messages and service, taken from tritonclient's wheel.

tritonclient ships `service_pb2` (the Open Inference Protocol's messages and Triton's
extensions), `service_pb2_grpc` (the servicer base class and `add_..._to_server`) and
`model_config_pb2` (Triton's `ModelConfig`). Using its modules, not a copy generated here,
matters beyond saving code: every generated set registers its symbols (`inference.*`) in
protobuf's one default pool, and a second set in the same process fails with "duplicate
symbol" (kserve/kserve#3099, SeldonIO/MLServer#1831). A process that imports inscale and
`tritonclient.grpc` (a user's test, our benchmarks) then has one set, and works.
"""

from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

__all__ = ["model_config_pb2", "service_pb2", "service_pb2_grpc"]
