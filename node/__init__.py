"""A node service: one gRPC server whose role (prefill, decode or mixed) picks what it serves."""
