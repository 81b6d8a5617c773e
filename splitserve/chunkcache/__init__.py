"""RAG chunk-cache: reuse the KV of retrieved passages wherever they appear in a prompt.

keys.py (position-independent keys), format.py (the binary value format), variants.py
(per-variant metadata and Cache-Craft statistics), tiers.py + redis_tier.py (local LRU tier in
front of Redis), store.py (ChunkStore: lookup and put across tiers, metrics), rope.py (RoPE
re-positioning), selection.py (which rows to recompute), blend.py (CacheBlend's blended
prefill over a CausalLM), cachecraft.py (reuse planning), chunk_forward.py (computing a
chunk's KV and attention statistics), runner.py (a request's blended prefill on the engine thread).
"""
