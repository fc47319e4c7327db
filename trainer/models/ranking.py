"""Full-ranking metrics at the seam: the pessimistic rank and NDCG that evaluation reports and
that early-stopping kinds watch on validation, defined once here so `trainer.models` needs
nothing from `trainer.evaluate` (DESIGN §1).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trainer.models.base import Scorer
from trainer.models.data import Interactions

K = 10
_BATCH = 256


def pessimistic_rank(scores: np.ndarray, seen_mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank of each row's target among its unseen items; NaN scores rank below everything."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    target_score = s[np.arange(s.shape[0]), target][:, None]
    candidates = ~seen_mask
    candidates[np.arange(s.shape[0]), target] = False
    above = ((s > target_score) & candidates).sum(axis=1)
    ties = ((s == target_score) & candidates).sum(axis=1)
    return above + ties


def ndcg_gains(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """Per user: 1/log2(rank + 2) when the held-out item is in the top k, else 0."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def scored_blocks(
    score: Callable[[np.ndarray], np.ndarray], users: np.ndarray, batch: int = _BATCH
) -> Iterator[tuple[slice, np.ndarray]]:
    """`(block, score(users[block]))` for consecutive blocks of `batch` users, in order.

    Blocks are scored on a thread per CPU this process may use (at most 4), at most that many
    ahead of the caller: scoring is numpy, which releases the GIL, so on 2 cores NCF's full
    ranking of 12k items took 1.6 ms a user instead of 2.5 (its test scoring at 10M interactions,
    71k users: about 175 s before, 100 s after).
    Scores do not depend on the threads: each block is the same call either way. `score` must
    be safe to call from several threads (every Scorer only reads its arrays).
    """
    starts = range(0, users.size, batch)
    workers = min(_cores(), _MAX_THREADS, len(starts))
    if workers <= 1:
        for start in starts:
            block = slice(start, start + batch)
            yield block, score(users[block])
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="score")
    try:
        pending: deque = deque()
        for start in starts:
            block = slice(start, start + batch)
            pending.append((block, pool.submit(score, users[block])))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:  # the caller stopped early or failed: blocks not started are not scored
        pool.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_MAX_THREADS = 4  # past this, memory for blocks in flight (4 x 256 x n_items floats) buys little


def full_ranks(scorer: Scorer, seen: Interactions, held_out: Interactions) -> np.ndarray:
    """Pessimistic rank of each held-out item among all items its user has not seen."""
    return shared_full_ranks(scorer, [(seen, held_out)])[0]


def shared_full_ranks(
    scorer: Scorer, checks: list[tuple[Interactions, Interactions]]
) -> list[np.ndarray]:
    """`full_ranks` of each (seen, held out) pair, each user scored once for all of them.

    NCF's validation ranks two held-out items per user, each against its own seen items: one
    scoring pass instead of two (scoring is most of an epoch's validation).
    """
    if not checks:
        return []
    users = np.unique(np.concatenate([held.user_idx for _, held in checks])).astype(np.int64)
    seen_csrs = [seen.matrix().tocsr() for seen, _ in checks]
    # each check's rows in the order of their user's position in `users`: a block's rows are
    # then one slice (found by binary search), not a scan of every row per block
    at = [np.searchsorted(users, held.user_idx) for _, held in checks]
    order = [np.argsort(pos, kind="stable") for pos in at]
    sorted_at = [pos[o] for pos, o in zip(at, order, strict=True)]
    ranks = [np.empty(len(held), dtype=np.int64) for _, held in checks]
    for block, scores in scored_blocks(scorer.score_many, users):
        stop = block.start + scores.shape[0]
        for c, (_, held) in enumerate(checks):
            lo, hi = np.searchsorted(sorted_at[c], [block.start, stop])
            if lo == hi:
                continue
            rows = order[c][lo:hi]
            mask = np.asarray(seen_csrs[c][held.user_idx[rows]].todense()) > 0
            ranks[c][rows] = pessimistic_rank(
                scores[at[c][rows] - block.start], mask, held.item_idx[rows].astype(np.int64)
            )
    return ranks


def full_ranking_ndcg(scorer: Scorer, seen: Interactions, held_out: Interactions) -> float:
    """Mean NDCG@10 over `held_out` (no fallback: what early stopping watches)."""
    return pooled_ndcg(scorer, [(seen, held_out)])


def pooled_ndcg(scorer: Scorer, checks: list[tuple[Interactions, Interactions]]) -> float:
    """Mean NDCG@10 over every held-out row of every (seen, held out) pair (`shared_full_ranks`)."""
    ranks = np.concatenate([np.empty(0, dtype=np.int64), *shared_full_ranks(scorer, checks)])
    return float(ndcg_gains(ranks).mean()) if ranks.size else 0.0
