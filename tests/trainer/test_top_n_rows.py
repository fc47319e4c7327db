"""`top_n_rows` (evaluation and the gate, a block of users at once) picks exactly what `top_n`
(serving, one user) picks, in the same order: ties, NaN, exclusions and short rows included."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.models import top_n, top_n_rows


@pytest.mark.parametrize("integer_scores", [True, False])  # many ties / almost none
def test_equals_top_n_row_by_row(integer_scores: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        rows, items, k = rng.integers(1, 20), rng.integers(1, 40), int(rng.integers(0, 15))
        scores = (
            rng.integers(0, 5, (rows, items)) if integer_scores else rng.random((rows, items))
        ).astype(np.float32)
        scores[rng.random((rows, items)) < 0.2] = np.nan
        exclude = rng.random((rows, items)) < 0.3
        best, values, counts = top_n_rows(scores, k, exclude)
        for r in range(rows):
            want, want_values = top_n(scores[r], k, exclude=np.flatnonzero(exclude[r]))
            assert best[r, : counts[r]].tolist() == want.tolist()
            assert np.array_equal(values[r, : counts[r]], want_values)
            assert (best[r, counts[r] :] == -1).all()


def test_leaves_the_scores_alone_and_handles_no_rows() -> None:
    scores = np.array([[3.0, np.nan, 1.0]], dtype=np.float32)
    before = scores.copy()
    best, _, counts = top_n_rows(scores, 2, np.array([[False, False, True]]))
    assert best.tolist() == [[0, -1]] and counts.tolist() == [1]
    assert np.array_equal(scores, before, equal_nan=True)
    empty, _, none = top_n_rows(np.zeros((0, 5), dtype=np.float32), 3)
    assert empty.shape == (0, 3) and none.size == 0
