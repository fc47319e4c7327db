"""`scored_blocks`: blocks scored on several threads come back in order, equal to scoring them
one by one, with at most a few blocks in flight, and a scorer's error reaches the caller."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from trainer.models import ranking
from trainer.models.ranking import scored_blocks


def _score(users: np.ndarray) -> np.ndarray:
    return np.sin(users[:, None] * np.arange(1, 50)).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 3000])
def test_blocks_come_back_in_order_and_equal_sequential_scoring(n: int) -> None:
    users = np.arange(n, dtype=np.int64)[::-1].copy()
    got = list(scored_blocks(_score, users, batch=256))
    assert [b.start for b, _ in got] == list(range(0, n, 256))
    assert all(b.stop == b.start + 256 for b, _ in got)
    joined = np.concatenate([s for _, s in got]) if got else np.empty((0, 49), np.float32)
    np.testing.assert_array_equal(joined, _score(users))


def test_at_most_a_few_blocks_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking.os, "cpu_count", lambda: 2)
    started, lock = [], threading.Lock()

    def score(users: np.ndarray) -> np.ndarray:
        with lock:
            started.append(int(users[0]))
        return _score(users)

    users = np.arange(40 * 10, dtype=np.int64)
    for block, _ in scored_blocks(score, users, batch=10):
        with lock:  # never more than 2 workers + the one handed over ahead of the caller
            assert len(started) <= block.start // 10 + 3
    assert sorted(started) == list(range(0, 400, 10))


def test_a_scorer_error_reaches_the_caller() -> None:
    def score(users: np.ndarray) -> np.ndarray:
        if users[0] >= 512:
            raise ValueError("broken block")
        return _score(users)

    with pytest.raises(ValueError, match="broken block"):
        list(scored_blocks(score, np.arange(2000), batch=256))
