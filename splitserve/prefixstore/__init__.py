"""The prefix store: a prompt's KV blocks shared by every node that names the same Redis (LMCache's remote
backend, Mooncake Store's role), so a prompt computed on one node is read, not computed, on the next.

engine_blocks.py picks a prompt's shareable blocks and copies them out of and into the paged KV cache (engine
thread); redis_blocks.py keeps them in Redis (format: splitserve/chunkcache/format.py, never pickled); node_path.py
wires both around a node's admissions (fetch before admitting, store after the prefill).
"""
