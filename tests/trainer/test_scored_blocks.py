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


@pytest.mark.parametrize("cores", [1, 4])
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 3000])
def test_blocks_come_back_in_order_and_equal_sequential_scoring(
    n: int, cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranking, "_cores", lambda: cores)
    users = np.arange(n, dtype=np.int64)[::-1].copy()
    got = list(scored_blocks(_score, users, batch=256))
    assert [b.start for b, _ in got] == list(range(0, n, 256))
    assert all(b.stop == b.start + 256 for b, _ in got)
    joined = np.concatenate([s for _, s in got]) if got else np.empty((0, 49), np.float32)
    np.testing.assert_array_equal(joined, _score(users))


def test_at_most_a_few_blocks_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "_cores", lambda: 2)
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


def test_a_caller_that_stops_early_leaves_the_rest_unscored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ranking, "_cores", lambda: 2)
    calls = []
    blocks = scored_blocks(lambda u: calls.append(int(u[0])) or _score(u), np.arange(5000), 10)
    next(blocks)
    blocks.close()  # what a `for` loop broken by an exception does, once collected
    assert len(calls) <= 4  # the block handed over, those in flight: not all 500


def test_evaluation_is_the_same_on_one_thread_and_on_four(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every kind's full metrics (ranks, coverage, sampled ranks, bias, groups) through the
    threaded blocks equal the sequential ones."""
    from scripts.bench_train import synthetic
    from trainer.evaluate import evaluate
    from trainer.interactions import Interactions, build_vocab, leave_last_out
    from trainer.models import MODELS

    ratings, _ = synthetic(700, 150, 12_000, seed=6)  # 700 test users: three blocks
    data = Interactions.from_ratings(ratings, build_vocab(ratings))
    split = leave_last_out(data)
    for kind in ("popularity", "itemcf", "als"):
        spec = MODELS[kind]
        scorer = spec.fit(split.train_valid, spec.candidates()[0], np.random.default_rng(0), None)
        results = []
        for cores in (1, 4):
            monkeypatch.setattr(ranking, "_cores", lambda cores=cores: cores)
            results.append(evaluate(scorer, split.train_valid, split.test, seed=3))
        assert results[0] == results[1], kind
        assert results[0].users == len(split.test) > 2 * 256
