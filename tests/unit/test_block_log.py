"""What a block pool tells the routers about its prefix cache (BlockPool.changes, NodeStats.kv_blocks) and what a
router makes of it (router/cluster/holdings.py)."""

import pytest

from splitserve.engine import block_log
from splitserve.engine.block_pool import BlockPool, block_hashes
from router.cluster.holdings import BlockHoldings
from tests.unit.test_block_pool import full


def cached_prompt(pool: BlockPool, tokens: list[int]) -> list[int]:
    ids = pool.allocate(len(tokens) // pool.block_size)
    full(pool, ids, tokens)
    pool.release(ids)
    return ids


def test_changes_since_a_cursor_are_the_hashes_stored_and_removed_since():
    pool = BlockPool(num_blocks=4, block_size=2)
    first = cached_prompt(pool, [1, 2, 3, 4])
    start = pool.changes(0)
    assert not start.snapshot and set(start.stored) == set(block_hashes([1, 2, 3, 4], 2)) and start.removed == ()
    assert pool.changes(start.seq) == block_log.BlockChanges(False, (), (), start.seq)  # nothing new
    pool.allocate(3)  # evicts one of the freed blocks (the least recently freed: the first prompt's second block)
    later = pool.changes(start.seq)
    assert later.stored == () and later.removed == (block_hashes([1, 2, 3, 4], 2)[1],) and first == [0, 1]


def mirrors(holdings: BlockHoldings, pool: BlockPool) -> bool:
    return len(holdings) == len(pool.cached) and all(holdings.leading((h,)) == 1 for h in pool.cached)


@pytest.mark.parametrize("num_blocks", [3, 2], ids=["changes", "snapshot_smaller"])
def test_a_router_applying_each_reply_holds_what_the_pool_holds(num_blocks):
    pool, holdings = BlockPool(num_blocks=num_blocks, block_size=2), BlockHoldings()
    for tokens in ([1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4], [9, 9], [5, 6]):  # evicting, storing again
        cached_prompt(pool, tokens)
        holdings.apply("node-1", pool.changes(holdings.cursor()[1]))
        assert mirrors(holdings, pool)


def test_an_unknown_or_forgotten_cursor_gets_everything_held():
    pool = BlockPool(num_blocks=2, block_size=2)  # the log keeps 1024 entries
    for i in range(600):  # 1,200 entries: the first ones are forgotten
        cached_prompt(pool, [i, i, i + 1, i + 1])
    held = set(block_hashes([599, 599, 600, 600], 2))
    for cursor in (0, -1, pool.changes(0).seq + 1):
        changes = pool.changes(cursor)
        assert changes.snapshot and set(changes.stored) == held and changes.removed == ()


def test_a_snapshot_keeps_the_newest_blocks(monkeypatch):
    monkeypatch.setattr(block_log, "MAX_REPORTED_BLOCKS", 2)
    pool = BlockPool(num_blocks=8, block_size=2)
    cached_prompt(pool, [1, 2, 3, 4, 5, 6])
    assert pool.changes(-1).stored == block_hashes([1, 2, 3, 4, 5, 6], 2)[1:]


def test_a_pool_without_prefix_caching_logs_nothing():
    pool = BlockPool(num_blocks=4, block_size=2, enable_prefix_caching=False)
    cached_prompt(pool, [1, 2, 3, 4])
    assert pool.changes(0) == block_log.BlockChanges(False, (), (), 0)


def test_holdings_follow_the_nodes_reports_and_a_restart_replaces_them():
    pool, holdings = BlockPool(num_blocks=4, block_size=2), BlockHoldings()
    prompt = block_hashes([1, 2, 3, 4], 2)
    cached_prompt(pool, [1, 2, 3, 4])
    holdings.apply("node-1", pool.changes(-1))
    assert holdings.leading(prompt + (b"x",)) == 2 and holdings.cursor() == ("node-1", pool.changes(0).seq)
    pool.allocate(3)  # evicts the second block
    holdings.apply("node-1", pool.changes(holdings.cursor()[1]))
    assert holdings.leading(prompt) == 1
    restarted = BlockPool(num_blocks=4, block_size=2)
    cached_prompt(restarted, [7, 8])
    holdings.apply("node-2", restarted.changes(0))  # a diff from a new instance: all it says it holds
    assert holdings.leading(prompt) == 0 and holdings.leading(block_hashes([7, 8], 2)) == 1


@pytest.mark.parametrize("exact", [False, True], ids=["guess", "reported"])
def test_finished_sequences_count_at_once_and_only_a_guess_is_trimmed_to_the_pool(exact):
    holdings = BlockHoldings()
    if exact:
        holdings.apply("node-1", block_log.BlockChanges(True, (), (), 1))
    old, new = block_hashes(list(range(8)), 2), block_hashes(list(range(10, 18)), 2)
    holdings.add(old, capacity=4)
    holdings.add(new, capacity=4)
    assert holdings.leading(new) == 4
    assert holdings.leading(old) == (4 if exact else 0)  # the node reports what it evicts
