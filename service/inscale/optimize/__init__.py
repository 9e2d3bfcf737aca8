"""`inscale optimize`: model variants (graph-optimized, int8, fp16), measured and installed."""
