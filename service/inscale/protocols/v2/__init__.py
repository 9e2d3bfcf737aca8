"""The Open Inference Protocol (KServe V2): decode requests to arrays, encode results back."""
