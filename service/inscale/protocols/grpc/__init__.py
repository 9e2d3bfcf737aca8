"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), as Triton serves it."""
