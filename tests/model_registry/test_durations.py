"""The one duration grammar of every command line (model_registry.durations)."""

from __future__ import annotations

import pytest

from model_registry.durations import duration


def test_durations() -> None:
    assert duration("24h") == 86400 and duration("90s") == 90 and duration("250ms") == 0.25
    assert duration("10m") == 600 and duration("7") == 7 and duration(" 1.5d ") == 129600


@pytest.mark.parametrize("bad", ["", "0s", "-1s", "1w", "١٠s", "10 m", "1e3s", "9" * 12, "s"])
def test_anything_else_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        duration(bad)
