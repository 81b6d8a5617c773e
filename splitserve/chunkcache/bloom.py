"""A Bloom filter over chunk content hashes, small enough for every Stats reply.

Bit i is byte i // 8, bit i % 8. A 32-hex-char hash h sets bits int(h[8j:8j+8], 16) % num_bits
for j < num_hashes (the hash is already uniform, so its slices serve as the k hash functions).
"""

from __future__ import annotations

NUM_HASHES = 4
MIN_BITS = 8192
BITS_PER_KEY = 16


def _bits(chunk_hash: str, num_bits: int, num_hashes: int) -> list[int]:
    return [int(chunk_hash[8 * j:8 * j + 8], 16) % num_bits for j in range(num_hashes)]


def build(chunk_hashes: list[str], num_hashes: int = NUM_HASHES) -> bytes:
    num_bits = max(MIN_BITS, BITS_PER_KEY * len(chunk_hashes))
    num_bits = -(-num_bits // 8) * 8
    bits = bytearray(num_bits // 8)
    for h in chunk_hashes:
        for i in _bits(h, num_bits, num_hashes):
            bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def might_contain(bloom: bytes, chunk_hash: str, num_hashes: int = NUM_HASHES) -> bool:
    num_bits = 8 * len(bloom)
    return bool(bloom) and all(bloom[i // 8] >> (i % 8) & 1 for i in _bits(chunk_hash, num_bits, num_hashes))
