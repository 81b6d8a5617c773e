"""BlockPool: exact block ids, reference counts, eviction order, prefix lookup, integrity."""

import pytest

from splitserve.engine.block_pool import NO_HASH, BlockPool, chain_hash


def full(pool: BlockPool, block_ids, tokens):
    parent = NO_HASH
    for i, block_id in enumerate(block_ids):
        parent = pool.register_full(block_id, parent, tokens[i * pool.block_size:(i + 1) * pool.block_size])


def test_allocate_hands_out_lowest_ids_first_and_returns_none_when_short():
    pool = BlockPool(num_blocks=4, block_size=2)
    assert pool.allocate(3) == [0, 1, 2]
    assert [b.ref_count for b in pool.blocks] == [1, 1, 1, 0]
    assert pool.allocate(2) is None
    assert pool.num_free == 1
    pool.check_integrity()


def test_release_appends_tail_first_so_shared_prefixes_are_evicted_last():
    pool = BlockPool(num_blocks=4, block_size=2)
    ids = pool.allocate(3)
    pool.release(ids)
    assert list(pool.free) == [3, 2, 1, 0]
    assert pool.allocate(2) == [3, 2]
    pool.check_integrity()


def test_prefix_lookup_revives_freed_blocks_and_counts_refs():
    pool = BlockPool(num_blocks=6, block_size=2)
    tokens = [5, 6, 7, 8, 9]
    ids = pool.allocate(3)
    full(pool, ids[:2], tokens)
    pool.release(ids)
    assert pool.lookup_prefix(tokens) == [0, 1]
    pool.acquire([0, 1])
    pool.acquire([0])
    assert [pool.blocks[i].ref_count for i in (0, 1, 2)] == [2, 1, 0]
    assert 0 not in pool.free and 2 in pool.free
    pool.release([0, 1])
    pool.release([0])
    assert pool.num_used == 0
    pool.check_integrity()


def test_lookup_stops_at_first_miss_and_needs_matching_parents():
    pool = BlockPool(num_blocks=4, block_size=2)
    ids = pool.allocate(2)
    full(pool, ids, [1, 2, 3, 4])
    assert pool.lookup_prefix([1, 2, 3, 4, 5]) == [0, 1]
    assert pool.lookup_prefix([1, 2, 9, 9]) == [0]
    assert pool.lookup_prefix([3, 4]) == []  # same tokens, different parent chain
    assert pool.lookup_prefix([1]) == []  # no full block


def test_eviction_reuses_oldest_freed_block_and_drops_its_hash():
    pool = BlockPool(num_blocks=2, block_size=2)
    a = pool.allocate(1)
    full(pool, a, [1, 2])
    pool.release(a)
    b = pool.allocate(1)
    full(pool, b, [3, 4])
    pool.release(b)
    assert list(pool.free) == [0, 1]
    assert pool.allocate(1) == [0]  # oldest freed: its cached [1, 2] is evicted
    assert pool.lookup_prefix([1, 2]) == []
    assert pool.lookup_prefix([3, 4]) == [1]
    pool.check_integrity()


def test_prefix_caching_off_never_hits():
    pool = BlockPool(num_blocks=2, block_size=2, enable_prefix_caching=False)
    ids = pool.allocate(1)
    full(pool, ids, [1, 2])
    assert pool.lookup_prefix([1, 2, 3]) == []


def test_double_release_is_a_broken_invariant():
    pool = BlockPool(num_blocks=2, block_size=2)
    ids = pool.allocate(1)
    pool.release(ids)
    with pytest.raises(RuntimeError, match="ref_count"):
        pool.release(ids)


def test_chain_hash_depends_on_parent():
    assert chain_hash(NO_HASH, [1, 2]) != chain_hash(chain_hash(NO_HASH, [0, 0]), [1, 2])


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks=0, block_size=16)
