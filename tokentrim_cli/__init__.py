"""tokentrim: long autoregressive video generation on Wan2.1 with drift-aware pruning and bounded KV caches."""

__version__ = "0.2.0"
