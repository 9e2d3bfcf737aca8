"""inscale: an ONNX model-serving microservice with dynamic request batching."""

__version__ = "0.1.0"
