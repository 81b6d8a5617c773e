"""Prefill service: runs prompts (chunked prefill), samples the first token, streams KV to decode nodes."""
