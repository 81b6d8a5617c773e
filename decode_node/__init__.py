"""Decode service: reserves KV blocks, receives KV from prefill nodes, decodes in a continuous batch."""
