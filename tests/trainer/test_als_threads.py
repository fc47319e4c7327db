"""ALS fits on every core, and that changes nothing: the factors equal a one-thread fit's."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.interactions import Interactions
from trainer.models import als


def test_factors_do_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    data = Interactions.build(
        rng.integers(0, 2_000, n), rng.integers(0, 500, n), rng.permutation(n), 2_000, 500
    )
    params = als.ALSParams(factors=16, iterations=4, recency_tau=5.0)
    fits = []
    for threads in (1, 2, 0):
        monkeypatch.setattr(als, "THREADS", threads)
        fits.append(als.fit(data, params, np.random.default_rng(0)))
    for other in fits[1:]:
        assert np.array_equal(other.user_factors, fits[0].user_factors)
        assert np.array_equal(other.item_factors, fits[0].item_factors)
